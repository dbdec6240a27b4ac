"use strict";
(function () {
  var tip = document.getElementById("tp-tip");
  var tl = document.getElementById("tp-tl");
  // Instant tooltips: move an element's title into the tooltip while hovered.
  function show(el, x, y) {
    if (el.hasAttribute("title")) {
      el.setAttribute("data-tip", el.getAttribute("title"));
      el.removeAttribute("title");
    }
    tip.textContent = el.getAttribute("data-tip");
    tip.hidden = false;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.max(4, Math.min(x + 14, window.innerWidth - w - 8)) + "px";
    tip.style.top = (y + h + 24 > window.innerHeight ? y - h - 10 : y + 16) + "px";
  }
  document.addEventListener("mousemove", function (e) {
    var el = e.target.closest && e.target.closest("#tp-tl [title], #tp-tl [data-tip]");
    if (el) { show(el, e.clientX, e.clientY); } else { tip.hidden = true; }
  });
  // Filter by name, and "only problems" (anything but succeeded).
  var filter = document.getElementById("tp-filter");
  var problems = document.getElementById("tp-problems");
  var rows = tl.getElementsByClassName("r");
  function apply() {
    var q = filter.value.toLowerCase(), only = problems.checked;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var name = r.firstChild.firstChild.textContent.toLowerCase();
      var ok = r.getAttribute("data-status") === "succeeded" && r.querySelectorAll(".retry").length === 0;
      r.hidden = (q && name.indexOf(q) < 0) || (only && ok);
    }
  }
  var timer = null;
  filter.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
  problems.addEventListener("change", apply);
  var buttons = document.querySelectorAll("[data-zoom]");
  function zoom(z) {
    tl.style.setProperty("--zoom", z);
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].classList.toggle("on", buttons[i].getAttribute("data-zoom") === String(z));
    }
  }
  for (var i = 0; i < buttons.length; i++) {
    buttons[i].addEventListener("click", function () { zoom(this.getAttribute("data-zoom")); });
  }
  zoom(1);
  // Local time for the start, where the viewer's clock zone is known.
  var t = document.querySelector("time[datetime]");
  if (t) {
    var d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) { t.title = t.textContent; t.textContent = d.toLocaleString(); }
  }
  // Drive the controls once and say what they did (for #check).
  function interact() {
    var out = {}, bar = tl.querySelector(".b");
    function visibleRows() {
      var n = 0;
      for (var i = 0; i < rows.length; i++) { if (!rows[i].hidden) n++; }
      return n;
    }
    if (bar) {
      var title = bar.getAttribute("title"), box = bar.getBoundingClientRect();
      bar.dispatchEvent(new MouseEvent("mousemove",
        { bubbles: true, clientX: box.left + 1, clientY: box.top + 1 }));
      out.tooltip = tip.hidden ? null : tip.textContent;
      out.tooltip_is_title = out.tooltip === title;
      document.body.dispatchEvent(new MouseEvent("mousemove", { bubbles: true }));
      out.tooltip_hides = tip.hidden;
    }
    var track = tl.querySelector(".axis .k"), width = track.getBoundingClientRect().width;
    zoom(4);
    out.zoom = track.getBoundingClientRect().width / width;
    zoom(1);
    if (rows.length) {
      filter.value = rows[0].firstChild.firstChild.textContent;
      apply();
      out.filtered = visibleRows();
      filter.value = "";
    }
    problems.checked = true;
    apply();
    out.problems = visibleRows();
    problems.checked = false;
    apply();
    out.after_reset = visibleRows();
    return out;
  }
  // #check: a summary of what the page shows, for tests that read the DOM.
  if (location.hash === "#check") {
    var names = { ok: "succeeded", fail: "failed", retry: "retried", cancel: "cancelled",
      run: "running", cached: "cached", other: "other" };
    // Synchronously (a callback might run after the DOM was dumped), after forcing
    // style and layout of the whole page: what a first render has to do.
    (function () {
      document.body.getBoundingClientRect();
      var rendered = performance.now();
      var stages = {}, flat = 0;
      for (var i = 0; i < rows.length; i++) {
        var r = rows[i], bars = r.querySelectorAll(".b"), out = [];
        for (var j = 0; j < bars.length; j++) {
          out.push(names[bars[j].classList[1]]);
          if (!(bars[j].getBoundingClientRect().width > 0)) flat++;  // laid out, visible
        }
        stages[r.firstChild.firstChild.textContent] = {
          status: r.getAttribute("data-status"), bars: out,
          markers: r.querySelectorAll(".m").length };
      }
      var counts = {}, chips = document.querySelectorAll("#tp-counts .chip");
      for (var k = 0; k < chips.length; k++) {
        counts[chips[k].getAttribute("data-status")] = parseInt(chips[k].firstChild.textContent.replace(/,/g, ""), 10);
      }
      var visible = rows.length ? rows[0].getBoundingClientRect().width : 0;
      var pre = document.createElement("pre");
      pre.id = "tp-check";
      pre.textContent = JSON.stringify({ rendered_ms: rendered, rows: rows.length, stages: stages,
        counts: counts, state: document.getElementById("tp-state").textContent,
        bad_widths: flat, row_width: visible,
        graph_nodes: document.querySelectorAll("#graph .tpg rect").length,
        interactions: interact() });
      document.body.appendChild(pre);
    })();
  }
})();
