"""CachePolicy and how a stage's and the pipeline's cache= settings combine."""

from __future__ import annotations

import pytest

import trio_pipeline as tp
from trio_pipeline._cache._policy import CachePolicy, check_cache_option, resolve_policy


def test_cache_policy_validates() -> None:
    assert CachePolicy(expire=5).expire == 5.0
    assert CachePolicy(params=iter(["a"])).params == ("a",)
    for bad in (
        {"expire": 0},
        {"expire": -1},
        {"expire": float("nan")},
        {"expire": True},
        {"expire": "1"},
        {"restore_outs": 1},
        {"code": None},
        {"params": "lr"},
        {"params": [1]},
    ):
        with pytest.raises(tp.StageDefinitionError):
            CachePolicy(**bad)
    with pytest.raises(TypeError):
        CachePolicy(1)  # type: ignore[call-arg]
    assert CachePolicy(expire=1) == CachePolicy(expire=1.0)
    with pytest.raises(AttributeError):
        CachePolicy().expire = 3  # type: ignore[misc]


def test_resolve_policy() -> None:
    custom = CachePolicy(expire=9)
    assert resolve_policy(None, None) is None
    assert resolve_policy(None, True) == CachePolicy()
    assert resolve_policy(False, True) is None  # a stage opts out of the pipeline default
    assert resolve_policy(True, None) == CachePolicy()
    assert resolve_policy(None, custom) is custom
    assert resolve_policy(custom, False) is custom
    with pytest.raises(TypeError, match="cache must be"):
        check_cache_option("stage 'a'", "yes")
    with pytest.raises(tp.StageDefinitionError):
        check_cache_option("stage 'a'", 1)
