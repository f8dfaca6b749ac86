"""Edit policies: random ranges and named recipes, validated against T's attribute names."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.core.policies import EditPolicyConfig, build_policy, parse_recipe

ATTRS = ("Male", "Young", "Black_Hair")


def policy(**kw):
    return build_policy(from_dict(EditPolicyConfig, kw, "policy"), ATTRS)


def test_random_amounts_stay_in_their_ranges_and_spare_unchosen_attributes():
    p = policy(kind="random", attributes=["Young", "Male"], ranges={"Young": [0.2, 0.6]}, default_range=[-1, -0.5])
    s = p.edits(np.arange(500), np.zeros(500, int))
    assert s.shape == (500, 3) and s.dtype == np.float32
    assert ((s[:, 1] >= 0.2) & (s[:, 1] <= 0.6)).all()                    # Young: its own range
    assert ((s[:, 0] >= -1) & (s[:, 0] <= -0.5)).all()                     # Male: the default range
    assert (s[:, 2] == 0).all()                                            # Black_Hair not chosen
    assert s[:, 1].std() > 0.05 and s[:, 0].std() > 0.05                   # really random


def test_random_edits_are_a_function_of_the_edit_seed_only():
    p = policy()
    a = p.edits([7, 8, 9], [0, 1, 2])
    b = p.edits([9, 7], [5, 0])
    np.testing.assert_array_equal(a[[2, 0]], b)
    assert not np.array_equal(a[0], a[1])


def test_max_active_edits_at_most_that_many_attributes():
    p = policy(max_active=1)
    s = p.edits(np.arange(300), np.zeros(300, int))
    assert ((s != 0).sum(1) == 1).all()
    assert len(set(np.argmax(s != 0, axis=1))) == 3                        # each attribute gets picked


def test_recipes_cycle_over_variants():
    p = policy(kind="recipes", recipes=["+Male", "-Young", "+0.5*Male-1.5*Black_Hair", "none"], strength=0.8)
    s = p.edits([1, 2, 3, 4, 5], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(s, [[0.8, 0, 0], [0, -0.8, 0], [0.5, 0, -1.5], [0, 0, 0], [0.8, 0, 0]])


@pytest.mark.parametrize("text, expected", [
    ("+Male", [1, 0, 0]), ("-Young", [0, -1, 0]), ("+Male-Young", [1, -1, 0]),
    (" + 2*Black_Hair ", [0, 0, 2]), ("-.25*Male +Young", [-0.25, 1, 0]), ("none", [0, 0, 0]),
])
def test_recipe_syntax(text, expected):
    np.testing.assert_allclose(parse_recipe(text, ATTRS, 1.0, "policy.recipes[0]"), expected)


@pytest.mark.parametrize("kw, field, words", [
    ({"attributes": ["Male", "Blond_Hair"]}, "policy.attributes[1]", ["Blond_Hair", "Black_Hair"]),
    ({"kind": "recipes", "recipes": ["+Male", "+Bald"]}, "policy.recipes[1]", ["Bald", "not an attribute"]),
    ({"kind": "recipes", "recipes": ["Male"]}, "policy.recipes[0]", ["cannot be read"]),
    ({"kind": "recipes", "recipes": ["+Male+Male"]}, "policy.recipes[0]", ["twice"]),
    ({"kind": "recipes", "recipes": []}, "policy.recipes", ["empty"]),
    ({"attributes": ["Male"], "ranges": {"Young": [0, 1]}}, "policy.ranges.Young", ["not among"]),
    ({"ranges": {"Male": [1, 0]}}, "policy.ranges.Male", ["low <= high"]),
    ({"default_range": [0, float("inf")]}, "policy.default_range", ["finite"]),
    ({"max_active": 4}, "policy.max_active", ["more than"]),
    ({"attributes": ["Male", "Male"]}, "policy.attributes", ["duplicates"]),
])
def test_bad_policies_name_the_field(kw, field, words):
    with pytest.raises(ConfigError) as e:
        policy(**kw)
    assert str(e.value).startswith(field), str(e.value)
    for w in words:
        assert w in str(e.value)


def test_describe_is_plain_data():
    import json
    d = policy(kind="random", ranges={"Male": [0, 1]}).describe()
    assert json.loads(json.dumps(d))["ranges"]["Male"] == [0.0, 1.0]
