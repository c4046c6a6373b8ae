"""Tests for rectifiers_jax.optim against hand-computed references (paper Sec. 2.1 and 4)."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.default import get_config
from rectifiers_jax import models, optim

# ----------------------------------------------------------------------------------------------
# Plain-Python references of the two momentum forms (PAPER.md Sec. 4), per scalar coordinate.


def caffe_reference(w0, grads, rates, mu, wd):
    """v = mu*v + lr*(g + wd*w); w -= v. Returns w after each step."""
    w, v, out = w0, 0.0, []
    for g, lr in zip(grads, rates, strict=True):
        v = mu * v + lr * (g + wd * w)
        w = w - v
        out.append(w)
    return out


def optax_reference(w0, grads, rates, mu, wd):
    """m = mu*m + (g + wd*w); w -= lr*m. Returns w after each step."""
    w, m, out = w0, 0.0, []
    for g, lr in zip(grads, rates, strict=True):
        m = mu * m + (g + wd * w)
        w = w - lr * m
        out.append(w)
    return out


def run(tx, params, grads_seq):
    """Apply `tx` to `params` for each gradient tree in `grads_seq`; params after each step."""
    state = tx.init(params)
    out = []
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


DROP_AFTER_3 = optax.piecewise_constant_schedule(0.1, {3: 0.1})  # 0.1, 0.1, 0.1, 0.01, ...


@pytest.mark.parametrize("style, expected", [("caffe", -0.8149), ("optax", -0.59539)])
def test_worked_example_across_rate_drop(style, expected):
    # PAPER.md Sec. 4: mu = 0.9, g = 1, w0 = 0, wd = 0, lr 0.1 x3 then 0.01.
    tx = optim.momentum_sgd(DROP_AFTER_3, momentum=0.9, weight_decay=0.0, style=style)
    ws, _ = run(tx, jnp.zeros(()), [jnp.ones(())] * 4)
    assert float(ws[-1]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("style", optim.STYLES)
def test_styles_match_python_loop_with_decay(style):
    mu, wd = 0.9, 0.05
    rates = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]
    w0 = [1.5, -2.0, 0.25]
    grad_rows = [[0.3, -1.0, 2.0], [1.0, 0.5, -0.7], [-0.2, 0.1, 0.4]]
    grad_rows += [[0.9, -0.3, 0.0], [0.05, 2.0, -1.0], [-1.5, 0.2, 0.3]]
    schedule = optax.piecewise_constant_schedule(0.1, {3: 0.1, 5: 0.1})
    tx = optim.momentum_sgd(schedule, momentum=mu, weight_decay=wd, style=style)
    params = {"conv1": {"kernel": jnp.asarray(w0, jnp.float32)}}
    grads = [{"conv1": {"kernel": jnp.asarray(g, jnp.float32)}} for g in grad_rows]
    ws, _ = run(tx, params, grads)
    ref = caffe_reference if style == "caffe" else optax_reference
    for i in range(3):
        expected = ref(w0[i], [g[i] for g in grad_rows], rates, mu, wd)
        got = [float(w["conv1"]["kernel"][i]) for w in ws]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_styles_agree_at_constant_rate_and_differ_after_drop():
    grads = [1.0, -0.5, 2.0, 0.3]
    same_c = caffe_reference(0.7, grads, [0.05] * 4, 0.9, 5e-4)
    same_o = optax_reference(0.7, grads, [0.05] * 4, 0.9, 5e-4)
    np.testing.assert_allclose(same_c, same_o, rtol=1e-12)
    for style, ref in (("caffe", same_c), ("optax", same_o)):
        tx = optim.momentum_sgd(0.05, momentum=0.9, weight_decay=5e-4, style=style)
        ws, _ = run(tx, jnp.asarray(0.7), [jnp.asarray(g) for g in grads])
        np.testing.assert_allclose([float(w) for w in ws], ref, rtol=1e-5)


def test_unknown_style_names_valid_ones():
    with pytest.raises(ValueError, match="caffe.*optax"):
        optim.momentum_sgd(0.1, style="pytorch")


# ----------------------------------------------------------------------------------------------
# Weight-decay mask: never on `a` (paper Sec. 2.1), by name not rank; biases per decay_biases.


def _params_tree():
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)

    return {
        "conv1": {"kernel": arr(2, 2, 3, 4), "bias": arr(4), "act": {"a": arr(4)}},  # channel-wise
        "conv2": {"kernel": arr(2, 2, 4, 4), "bias": arr(4), "act": {"a": arr()}},  # shared
        "fc3": {"kernel": arr(4, 5), "bias": arr(5)},
    }


@pytest.mark.parametrize("style", optim.STYLES)
@pytest.mark.parametrize("decay_biases", [True, False])
def test_decay_touches_exactly_the_right_leaves(style, decay_biases):
    lr, wd = 0.1, 0.01
    params = _params_tree()
    tx = optim.momentum_sgd(
        lr, momentum=0.9, weight_decay=wd, style=style, decay_biases=decay_biases
    )
    zeros = jax.tree.map(jnp.zeros_like, params)
    (new,), _ = run(tx, params, [zeros])
    flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    flat_new = dict(jax.tree_util.tree_flatten_with_path(new)[0])
    seen = set()
    for path, w in flat_old.items():
        name = jax.tree_util.keystr(path)
        moved = np.asarray(flat_new[path]) - np.asarray(w)
        leaf = path[-1].key
        decays = leaf == "kernel" or (leaf == "bias" and decay_biases)
        # With g = 0 the first step of either form moves w by -lr * wd * w, or not at all.
        expected = -lr * wd * np.asarray(w) if decays else np.zeros_like(w)
        np.testing.assert_allclose(moved, expected, rtol=1e-4, atol=1e-9, err_msg=name)
        seen.add((leaf, np.ndim(w)))
    # The tree really had a rank-0 `a`, a rank-1 `a` and rank-1 biases.
    assert {("a", 0), ("a", 1), ("bias", 1), ("kernel", 2), ("kernel", 4)} <= seen


def test_a_still_gets_momentum_at_the_weights_rate():
    # Paper Sec. 2.1: `a` is updated with momentum and the same learning rate, just no decay.
    lr, mu = 0.1, 0.9
    params = {"act": {"a": jnp.asarray(0.25)}, "kernel": jnp.asarray(0.25)}
    tx = optim.momentum_sgd(lr, momentum=mu, weight_decay=0.5)
    grads = [{"act": {"a": jnp.asarray(1.0)}, "kernel": jnp.asarray(1.0)}] * 3
    ws, _ = run(tx, params, grads)
    got_a = [float(w["act"]["a"]) for w in ws]
    got_k = [float(w["kernel"]) for w in ws]
    np.testing.assert_allclose(
        got_a, caffe_reference(0.25, [1.0] * 3, [lr] * 3, mu, 0.0), rtol=1e-6
    )
    np.testing.assert_allclose(
        got_k, caffe_reference(0.25, [1.0] * 3, [lr] * 3, mu, 0.5), rtol=1e-6
    )


@pytest.mark.parametrize("activation, num_a", [("prelu", 13), ("prelu_shared", 13), ("relu", 0)])
def test_mask_on_a_real_model_tree(activation, num_a):
    # Shapes only (no compute): every `a` of the 14-layer model is excluded, nothing else is.
    model = models.build("net14", activation=activation, num_classes=10, width=0.125)
    shapes = jax.eval_shape(
        functools.partial(models.init_params, model, image_size=80), jax.random.key(0)
    )
    mask = optim.weight_decay_mask(shapes, decay_biases=False)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    off = sorted(jax.tree_util.keystr(p) for p, m in flat if not m)
    a_paths = [jax.tree_util.keystr(p) for p, _ in flat if p[-1].key == "a"]
    bias_paths = [jax.tree_util.keystr(p) for p, _ in flat if p[-1].key == "bias"]
    assert len(a_paths) == num_a
    assert all(p.endswith("['act']['a']") for p in a_paths)
    assert off == sorted(a_paths + bias_paths)


# ----------------------------------------------------------------------------------------------
# Schedules from config.optim


def _optim_config(**overrides):
    cfg = get_config().optim
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_steps_schedule_values_at_boundaries_in_epochs():
    spe = 10
    sched = optim.make_schedule(_optim_config(learning_rate=0.1, boundaries_epochs=(2, 5)), spe)
    # Boundary epoch e -> step e * steps_per_epoch is the first update at the lower rate.
    expected = {0: 0.1, 19: 0.1, 20: 0.01, 49: 0.01, 50: 0.001, 10_000: 0.001}
    for step, rate in expected.items():
        assert float(sched(step)) == pytest.approx(rate, rel=1e-6), step


def test_steps_schedule_boundaries_in_steps_override_epochs():
    cfg = _optim_config(learning_rate=0.2, boundaries_epochs=(2, 5), boundaries_steps=(7, 9))
    assert optim.schedule_boundaries(cfg, 100) == (7, 9)
    sched = optim.make_schedule(cfg, 100)
    expected = {6: 0.2, 7: 0.02, 8: 0.02, 9: 0.002}
    for step, rate in expected.items():
        assert float(sched(step)) == pytest.approx(rate, rel=1e-6), step


def test_constant_and_plateau_schedules_are_flat():
    for name in ("constant", "plateau"):
        sched = optim.make_schedule(_optim_config(schedule=name, learning_rate=0.03), 10)
        assert [float(sched(s)) for s in (0, 500, 10**6)] == pytest.approx([0.03] * 3)


def test_optimizer_state_reports_the_rate_used_by_each_step():
    # momentum 0 and wd 0: w moves by exactly -lr(t) * g, so the rate actually used is observable.
    cfg = _optim_config(learning_rate=0.1, momentum=0.0, weight_decay=0.0, boundaries_epochs=(1, 2))
    tx = optim.make_optimizer(cfg, steps_per_epoch=2)
    w = jnp.zeros(())
    state = tx.init(w)
    assert float(optim.get_learning_rate(state)) == pytest.approx(0.1)
    for expected in (0.1, 0.1, 0.01, 0.01, 0.001):
        updates, state = tx.update(jnp.ones(()), state, w)
        assert float(updates) == pytest.approx(-expected, rel=1e-6)
        assert float(optim.get_learning_rate(state)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        optim.set_learning_rate(state, 0.5)


@pytest.mark.parametrize("schedule", ["steps", "constant"])
def test_warmup_ramps_linearly_then_follows_the_schedule(schedule):
    # 1.5 epochs of 4 steps: 6 warm-up updates at 1/6, 2/6, ..., 6/6 of the rate; "steps" then
    # drops at epoch 2 (update 8) as without warm-up. Updates observed as in the test above.
    cfg = _optim_config(
        schedule=schedule,
        learning_rate=0.06,
        momentum=0.0,
        weight_decay=0.0,
        boundaries_epochs=(2, 3),
        warmup_epochs=1.5,
    )
    tx = optim.make_optimizer(cfg, steps_per_epoch=4)
    w = jnp.zeros(())
    state = tx.init(w)
    used = []
    for _ in range(10):
        updates, state = tx.update(jnp.ones(()), state, w)
        used.append(-float(updates))
    after = [0.06, 0.06, 0.006, 0.006] if schedule == "steps" else [0.06] * 4
    assert used == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, *after], rel=1e-5)


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_get_learning_rate_for_every_schedule(schedule):
    tx = optim.make_optimizer(_optim_config(schedule=schedule, learning_rate=0.01), 5)
    state = tx.init({"kernel": jnp.ones((2, 2))})
    assert float(optim.get_learning_rate(state)) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"schedule": "cosine"}, "config.optim.schedule"),
        ({"boundaries_epochs": (5, 5)}, "config.optim.boundaries_epochs"),
        ({"boundaries_epochs": (6, 3)}, "config.optim.boundaries_epochs"),
        ({"boundaries_steps": (10, 4)}, "config.optim.boundaries_steps"),
        ({"boundaries_epochs": (0, 3)}, "config.optim.boundaries_epochs"),
        ({"learning_rate": -0.01}, "config.optim.learning_rate"),
        ({"momentum": 1.5}, "config.optim.momentum"),
        ({"weight_decay": -5e-4}, "config.optim.weight_decay"),
        ({"style": "torch"}, "config.optim.style"),
        ({"decay_factor": 0.0}, "config.optim.decay_factor"),
        ({"schedule": "plateau", "plateau_patience": 0}, "config.optim.plateau_patience"),
        ({"plateau_min_delta": -1.0}, "config.optim.plateau_min_delta"),
        ({"plateau_max_drops": -1}, "config.optim.plateau_max_drops"),
        ({"warmup_epochs": -1.0}, "config.optim.warmup_epochs"),
        ({"schedule": "plateau", "warmup_epochs": 1.0}, "config.optim.warmup_epochs"),
    ],
)
def test_make_optimizer_rejects_bad_config(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")) as info:
        optim.make_optimizer(_optim_config(**overrides), steps_per_epoch=10)
    assert "\n" not in str(info.value)


def test_unknown_schedule_lists_valid_ones():
    with pytest.raises(ValueError, match="steps.*plateau.*constant"):
        optim.make_schedule(_optim_config(schedule="cosine"), 10)


# ----------------------------------------------------------------------------------------------
# Plateau: host-side decisions, checkpointable state, rate changes without recompiling.


def test_plateau_tracker_decisions():
    tracker = optim.PlateauTracker(patience=2, min_delta=0.1)
    errors = [50.0, 40.0, 39.95, 39.92, 39.0, 38.95, 38.99, 30.0, 30.0, 29.95]
    # 39.95, 39.92: within 0.1 of best 40.0 -> two bad evals -> drop. 39.0 improves. 38.95 and
    # 38.99 are within 0.1 of 39.0 -> drop. 30.0 improves; 30.0, 29.95 not enough -> drop.
    expected = [False, False, False, True, False, False, True, False, False, True]
    assert [tracker.update(e) for e in errors] == expected
    assert tracker.num_drops == 3
    assert tracker.best == 30.0


def test_plateau_tracker_max_drops_and_nan():
    tracker = optim.PlateauTracker(patience=1, min_delta=0.0, max_drops=2)
    assert [tracker.update(e) for e in (10.0, float("nan"), 10.0, 10.0, 10.0)] == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_plateau_tracker_state_round_trip():
    errors = [50.0, 49.0, 48.99, 47.0, 47.0, 46.95, 46.0, 46.0, 46.0, 45.99]
    reference = optim.PlateauTracker(patience=2, min_delta=0.1)
    expected = [reference.update(e) for e in errors]
    first = optim.PlateauTracker(patience=2, min_delta=0.1)
    got = [first.update(e) for e in errors[:5]]
    saved = json.loads(json.dumps(first.state_dict()))  # must survive JSON (checkpoint metadata)
    resumed = optim.PlateauTracker(patience=2, min_delta=0.1)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == first.state_dict()
    got += [resumed.update(e) for e in errors[5:]]
    assert got == expected
    fresh = optim.PlateauTracker(patience=2)
    fresh.load_state_dict(json.loads(json.dumps(fresh.state_dict())))
    assert fresh.best is None


@pytest.mark.parametrize("style", optim.STYLES)
def test_set_learning_rate_changes_next_update_without_recompiling(style):
    tx = optim.make_optimizer(
        _optim_config(schedule="plateau", learning_rate=0.1, weight_decay=0.0, style=style), 10
    )
    traces = []

    @jax.jit
    def step(w, state):
        traces.append(1)  # runs only while tracing
        updates, state = tx.update(jnp.ones_like(w), state, w)
        return optax.apply_updates(w, updates), state

    w = jnp.zeros(())
    state = tx.init(w)
    for _ in range(3):
        w, state = step(w, state)
    state = optim.set_learning_rate(state, 0.01)
    assert float(optim.get_learning_rate(state)) == pytest.approx(0.01)
    w, state = step(w, state)
    assert len(traces) == 1
    # The same worked example as above, with the drop applied on the host.
    expected = -0.8149 if style == "caffe" else -0.59539
    assert float(w) == pytest.approx(expected, abs=1e-6)


def test_plateau_tracker_from_config():
    cfg = _optim_config(
        schedule="plateau", plateau_patience=3, plateau_min_delta=0.5, plateau_max_drops=1
    )
    tracker = optim.make_plateau_tracker(cfg)
    assert (tracker.patience, tracker.min_delta, tracker.max_drops) == (3, 0.5, 1)
    assert optim.make_plateau_tracker(_optim_config(schedule="steps")) is None


def test_set_learning_rate_keeps_sharding_of_a_replicated_state():
    # As in training: the state is replicated over a mesh and the step has fixed in_shardings.
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tx = optim.make_optimizer(_optim_config(schedule="plateau", learning_rate=0.1), 10)
    w = jax.device_put(jnp.ones((4,)), replicated)
    state = jax.device_put(tx.init(w), replicated)
    traces = []

    @functools.partial(jax.jit, in_shardings=replicated, out_shardings=replicated)
    def step(w, state):
        traces.append(1)
        updates, state = tx.update(jnp.ones_like(w), state, w)
        return optax.apply_updates(w, updates), state

    w, state = step(w, state)
    state = optim.set_learning_rate(state, 0.001)
    assert optim.get_learning_rate(state).sharding == replicated
    w, state = step(w, state)
    assert len(traces) == 1
    assert float(optim.get_learning_rate(state)) == pytest.approx(0.001)
