"""plate: dims, frames, broadcasting, subsampling, sequential plates, shape errors."""

import math

import pytest
import torch
import torch.distributions as tdist

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.poutine import CondIndepStackFrame
from ember.poutine.misc_messengers import _SubstituteValuesMessenger
from ember.runtime import get_stack

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def frames_of(tr, name):
    return [(f.name, f.dim, f.size) for f in tr.nodes[name].cond_indep_stack]


def run(model, *args):
    return poutine.trace(model).get_trace(*args)


# ====================================================================== dim allocation
class TestDims:
    def test_nested_plates_get_minus_one_then_minus_two(self):
        def model():
            with pyro.plate("outer", 3) as i:
                with pyro.plate("inner", 2) as j:
                    return pyro.sample("z", dist.Normal(0.0, 1.0)), i, j

        tr = run(model)
        assert frames_of(tr, "z") == [("outer", -1, 3), ("inner", -2, 2)]
        z, i, j = tr.nodes["_RETURN"].value
        assert z.shape == (2, 3)
        assert torch.equal(i, torch.arange(3)) and torch.equal(j, torch.arange(2))

    def test_sibling_plates_reuse_dim(self):
        def model():
            with pyro.plate("a", 3):
                pyro.sample("za", dist.Normal(0.0, 1.0))
            with pyro.plate("b", 4):
                pyro.sample("zb", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert frames_of(tr, "za") == [("a", -1, 3)]
        assert frames_of(tr, "zb") == [("b", -1, 4)]
        assert tr.nodes["zb"].value.shape == (4,)

    def test_explicit_dim(self):
        def model():
            with pyro.plate("p", 3, dim=-3):
                return pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert frames_of(tr, "z") == [("p", -3, 3)]
        assert tr.nodes["z"].value.shape == (3, 1, 1)
        assert tr.nodes["z"].fn.batch_shape == (3, 1, 1)

    def test_explicit_outer_dim_auto_inner(self):
        def model():
            with pyro.plate("outer", 3, dim=-2):
                with pyro.plate("inner", 4):
                    return pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert frames_of(tr, "z") == [("outer", -2, 3), ("inner", -1, 4)]
        assert tr.nodes["z"].value.shape == (3, 4)

    def test_auto_skips_explicitly_taken_dim(self):
        def model():
            with pyro.plate("outer", 3, dim=-1):
                with pyro.plate("inner", 4):
                    return pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert frames_of(tr, "z") == [("outer", -1, 3), ("inner", -2, 4)]
        assert tr.nodes["z"].value.shape == (4, 3)

    def test_explicit_dim_clash_raises(self):
        with pytest.raises(ValueError, match="'b'.*-1.*'a'"):
            with pyro.plate("a", 2, dim=-1):
                with pyro.plate("b", 3, dim=-1):
                    pass
        # dims are released after the error
        with pyro.plate("c", 2):
            assert get_stack()[-1].dim == -1

    @pytest.mark.parametrize("bad_dim", [0, 1])
    def test_non_negative_dim_raises(self, bad_dim):
        with pytest.raises(ValueError, match="'p'"):
            pyro.plate("p", 3, dim=bad_dim)

    def test_same_name_nested_raises(self):
        with pytest.raises(ValueError, match="'p'"):
            with pyro.plate("p", 2):
                with pyro.plate("p", 3):
                    pass

    def test_bad_size_and_name(self):
        with pytest.raises(ValueError, match="'p'"):
            pyro.plate("p", -1)
        with pytest.raises(ValueError, match="subsample_size needs the plate's size"):
            pyro.plate("p", subsample_size=3)
        with pytest.raises(TypeError):
            pyro.plate(3, 2)

    def test_dims_released_after_exception_in_body(self):
        with pytest.raises(KeyError):
            with pyro.plate("a", 2):
                with pyro.plate("b", 2):
                    raise KeyError("x")
        assert get_stack() == []
        with pyro.plate("c", 2):
            assert get_stack()[-1].dim == -1


# ============================================================================ frames
class TestFrames:
    def test_frame_fields(self):
        def model():
            with pyro.plate("data", 10, subsample_size=4):
                pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        (f,) = tr.nodes["z"].cond_indep_stack
        assert isinstance(f, CondIndepStackFrame)
        assert f.name == "data" and f.dim == -1 and f.size == 4 and f.full_size == 10
        assert f.vectorized is True

    def test_outermost_frame_first(self):
        def model():
            with pyro.plate("a", 2):
                with pyro.plate("b", 3):
                    with pyro.plate("c", 4):
                        pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert [f.name for f in tr.nodes["z"].cond_indep_stack] == ["a", "b", "c"]
        assert tr.nodes["z"].value.shape == (4, 3, 2)

    def test_sites_outside_have_no_frames(self):
        def model():
            with pyro.plate("a", 2):
                pyro.sample("in", dist.Normal(0.0, 1.0))
            pyro.sample("out", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert tr.nodes["out"].cond_indep_stack == ()
        assert tr.nodes["out"].value.shape == ()

    def test_param_inside_plate_gets_frame_but_is_not_broadcast(self):
        def model():
            with pyro.plate("a", 5):
                return pyro.param("p", torch.tensor(1.0))

        tr = run(model)
        assert frames_of(tr, "p") == [("a", -1, 5)]
        assert tr.nodes["p"].value.shape == ()


# ====================================================================== broadcasting
class TestBroadcast:
    def test_scalar_distribution_broadcast_to_plate_size(self):
        def model():
            with pyro.plate("p", 4):
                return pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert tr.nodes["z"].value.shape == (4,)
        assert tr.nodes["z"].fn.batch_shape == (4,)
        assert len(set(tr.nodes["z"].value.tolist())) == 4  # independent draws

    def test_size_one_batch_expanded(self):
        def model():
            with pyro.plate("p", 4):
                return pyro.sample("z", dist.Normal(torch.zeros(1), 1.0))

        assert run(model).nodes["z"].value.shape == (4,)

    def test_batch_on_right_plate_on_dim_minus_two(self):
        def model():
            with pyro.plate("p", 2, dim=-2):
                return pyro.sample("z", dist.Normal(torch.zeros(3), 1.0))

        tr = run(model)
        # dim -1 (size 3) is not declared by a plate: allowed (summed), as in Pyro
        assert tr.nodes["z"].value.shape == (2, 3)

    def test_event_dims_stay_on_the_right(self):
        def model():
            with pyro.plate("p", 3):
                return pyro.sample("z", dist.Normal(torch.zeros(5), 1.0).to_event(1))

        tr = run(model)
        tr.compute_log_prob()
        assert tr.nodes["z"].value.shape == (3, 5)
        assert tr.nodes["z"].log_prob.shape == (3,)

    def test_nested_plates_log_prob_shapes_and_values(self):
        data = torch.arange(6.0).reshape(2, 3) / 4

        def model():
            with pyro.plate("x", 3):
                with pyro.plate("y", 2):
                    pyro.sample("obs", dist.Normal(0.5, 2.0), obs=data)

        tr = run(model)
        tr.compute_log_prob()
        lp = tr.nodes["obs"].log_prob
        assert lp.shape == (2, 3)
        assert torch.allclose(lp, tdist.Normal(0.5, 2.0).log_prob(data))
        assert tr.log_prob_sum().item() == pytest.approx(tdist.Normal(0.5, 2.0).log_prob(data).sum().item(), abs=1e-5)

    def test_observation_broadcast_size_one(self):
        def model():
            with pyro.plate("p", 3):
                pyro.sample("o", dist.Normal(torch.tensor([0.0, 1.0, 2.0]), 1.0), obs=torch.tensor([1.0]))

        with pytest.warns(UserWarning, match="Observed site 'o' has size 1 along dim -1 of plate\\('p'\\) of size 3.*counted 3 times"):
            tr = run(model)
        tr.compute_log_prob()
        expected = torch.tensor([-0.5, 0.0, -0.5]) - LOG_SQRT_2PI
        assert torch.allclose(tr.nodes["o"].log_prob, expected)


# ======================================================================= subsampling
class TestSubsample:
    def test_scale_and_indices(self):
        def model():
            with pyro.plate("data", 10, subsample_size=4) as idx:
                pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.zeros(4))
                return idx

        tr = run(model)
        idx = tr.nodes["_RETURN"].value
        assert idx.shape == (4,) and idx.dtype == torch.long
        assert len(set(idx.tolist())) == 4
        assert all(0 <= i < 10 for i in idx.tolist())
        o = tr.nodes["o"]
        assert o.scale == pytest.approx(2.5)
        assert tr.log_prob_sum().item() == pytest.approx(2.5 * 4 * -LOG_SQRT_2PI, abs=1e-5)

    def test_indices_cover_range_over_many_draws(self):
        seen = set()
        for _ in range(30):
            with pyro.plate("data", 6, subsample_size=2) as idx:
                seen.update(idx.tolist())
        assert seen == set(range(6))

    def test_subsample_site_recorded_but_not_scored_or_stochastic(self):
        def model():
            with pyro.plate("data", 10, subsample_size=3):
                pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert "data" in tr.nodes and tr.nodes["data"].type == "subsample"
        assert tr.stochastic_nodes == ["z"]
        z = tr.nodes["z"].value
        expected = (10 / 3) * tdist.Normal(0.0, 1.0).log_prob(z).sum()
        assert tr.log_prob_sum().item() == pytest.approx(expected.item(), abs=1e-4)

    def test_subsample_size_equal_to_size(self):
        def model():
            with pyro.plate("data", 3, subsample_size=3) as idx:
                pyro.sample("z", dist.Normal(0.0, 1.0))
                return idx

        tr = run(model)
        assert torch.equal(tr.nodes["_RETURN"].value, torch.arange(3))
        assert tr.nodes["z"].scale == 1.0

    def test_nested_subsample_scales_multiply(self):
        def model():
            with pyro.plate("a", 10, subsample_size=5):
                with pyro.plate("b", 6, subsample_size=2):
                    pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert tr.nodes["z"].scale == pytest.approx(6.0)
        assert tr.nodes["z"].value.shape == (2, 5)

    def test_replaying_guide_trace_reuses_indices(self):
        def guide():
            with pyro.plate("data", 100, subsample_size=5) as idx:
                pyro.sample("z", dist.Normal(0.0, 1.0))
            return idx

        def model():
            with pyro.plate("data", 100, subsample_size=5) as idx:
                pyro.sample("z", dist.Normal(0.0, 1.0))
            return idx

        gt = poutine.trace(guide).get_trace()
        mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace()
        g_idx = gt.nodes["_RETURN"].value
        assert torch.equal(mt.nodes["_RETURN"].value, g_idx)
        assert torch.equal(mt.nodes["data"].value, g_idx)
        assert torch.equal(mt.nodes["z"].value, gt.nodes["z"].value)
        # without replay the model draws its own indices
        assert not torch.equal(run(model).nodes["_RETURN"].value, g_idx)

    def test_conditioning_on_guide_trace_reuses_indices(self):
        def model():
            with pyro.plate("data", 50, subsample_size=4) as idx:
                pyro.sample("z", dist.Normal(0.0, 1.0))
            return idx

        gt = run(model)
        tr = run(poutine.condition(model, data=gt))
        assert torch.equal(tr.nodes["_RETURN"].value, gt.nodes["_RETURN"].value)
        assert tr.nodes["z"].is_observed and tr.nodes["z"].scale == pytest.approx(12.5)

    def test_seed_reproduces_indices(self):
        def model():
            with pyro.plate("data", 50, subsample_size=4) as idx:
                return idx

        a = poutine.seed(model, rng_seed=3)()
        b = poutine.seed(model, rng_seed=3)()
        c = poutine.seed(model, rng_seed=4)()
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_sequential_replay_reuses_indices(self):
        def model():
            out = []
            for i in pyro.plate("s", 100, subsample_size=3):
                out.append(i)
                pyro.sample(f"x_{i}", dist.Normal(0.0, 1.0))
            return out

        gt = run(model)
        tr = run(poutine.replay(model, trace=gt))
        assert tr.nodes["_RETURN"].value == gt.nodes["_RETURN"].value
        for i in gt.nodes["_RETURN"].value:
            assert torch.equal(tr.nodes[f"x_{i}"].value, gt.nodes[f"x_{i}"].value)

    def test_deterministic_and_factor_inside_plates(self):
        def model():
            with pyro.plate("a", 3):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.deterministic("z2", 2 * z, event_dim=0)
                with pyro.plate("b", 2):
                    pyro.factor("f", torch.ones(2, 3))

        tr = run(model)
        tr.compute_log_prob()
        assert torch.equal(tr.nodes["z2"].value, 2 * tr.nodes["z"].value)
        assert tr.nodes["z2"].log_prob.shape == (3,) and (tr.nodes["z2"].log_prob == 0).all()
        assert tr.nodes["f"].log_prob.shape == (2, 3)
        expected = tdist.Normal(0.0, 1.0).log_prob(tr.nodes["z"].value).sum() + 6.0
        assert tr.log_prob_sum().item() == pytest.approx(expected.item(), abs=1e-5)

    def test_explicit_subsample_tensor(self):
        sub = torch.tensor([1, 3, 5])

        def model():
            with pyro.plate("data", 10, subsample=sub) as idx:
                pyro.sample("z", dist.Normal(0.0, 1.0))
                return idx

        tr = run(model)
        assert torch.equal(tr.nodes["_RETURN"].value, sub)
        z = tr.nodes["z"]
        assert z.value.shape == (3,)
        assert z.scale == pytest.approx(10 / 3)
        (f,) = z.cond_indep_stack
        assert f.size == 3 and f.full_size == 10

    def test_explicit_subsample_without_size(self):
        with pyro.plate("data", subsample=torch.tensor([4, 2])) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        assert torch.equal(idx, torch.tensor([4, 2])) and z.shape == (2,)

    def test_subsampled_data_indexing(self):
        data = torch.arange(20.0)

        def model():
            with pyro.plate("data", 20, subsample_size=5) as idx:
                pyro.sample("o", dist.Normal(0.0, 1.0), obs=data[idx])
                return idx

        tr = run(model)
        idx = tr.nodes["_RETURN"].value
        assert torch.equal(tr.nodes["o"].value, idx.float())
    def test_reused_subsampled_plate_keeps_indices(self):
        def model():
            p = pyro.plate("data", 10, subsample_size=3)
            with p as i1:
                pyro.sample("a", dist.Normal(0.0, 1.0))
            with p as i2:
                pyro.sample("b", dist.Normal(0.0, 1.0))
            return i1, i2

        i1, i2 = run(model).nodes["_RETURN"].value
        assert torch.equal(i1, i2)

    def test_reused_full_plate_object(self):
        x_axis = pyro.plate("outer", 5, dim=-1)
        y_axis = pyro.plate("inner", 4, dim=-2)

        def model():
            with x_axis:
                a = pyro.sample("a", dist.Normal(0.0, 1.0))
            with y_axis:
                b = pyro.sample("b", dist.Normal(0.0, 1.0))
            with x_axis, y_axis:
                c = pyro.sample("c", dist.Normal(0.0, 1.0))
            return a, b, c

        a, b, c = model()
        assert a.shape == (5,) and b.shape == (4, 1) and c.shape == (4, 5)


# ======================================================================== sequential
class TestSequential:
    def test_yields_python_ints_in_order(self):
        def model():
            out = []
            for i in pyro.plate("s", 3):
                out.append(i)
                pyro.sample(f"x_{i}", dist.Normal(0.0, 1.0))
            return out

        tr = run(model)
        out = tr.nodes["_RETURN"].value
        assert out == [0, 1, 2] and all(type(i) is int for i in out)
        for counter, i in enumerate(out):
            (f,) = tr.nodes[f"x_{i}"].cond_indep_stack
            assert f.name == "s" and f.dim is None and f.counter == counter
            assert f.vectorized is False
            assert tr.nodes[f"x_{i}"].scale == 1.0
            assert tr.nodes[f"x_{i}"].value.shape == ()

    def test_subsampled_sequential_plate_scales(self):
        def model():
            out = []
            for i in pyro.plate("s", 10, subsample_size=2):
                out.append(i)
                pyro.sample(f"x_{i}", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
            return out

        tr = run(model)
        out = tr.nodes["_RETURN"].value
        assert len(out) == 2 and len(set(out)) == 2 and all(0 <= i < 10 for i in out)
        for i in out:
            assert tr.nodes[f"x_{i}"].scale == pytest.approx(5.0)
        assert tr.log_prob_sum().item() == pytest.approx(5.0 * 2 * -LOG_SQRT_2PI, abs=1e-5)

    def test_stack_clean_after_loop_and_between_iterations(self):
        p = pyro.plate("s", 3)
        for _ in p:
            assert get_stack() == [p]
        assert get_stack() == []
        for _ in pyro.plate("t", 3):
            break
        assert get_stack() == []

    def test_vectorized_plate_inside_sequential(self):
        def model():
            for i in pyro.plate("s", 2):
                with pyro.plate(f"v_{i}", 3):
                    pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))

        tr = run(model)
        assert [(f.name, f.dim) for f in tr.nodes["z_1"].cond_indep_stack] == [("s", None), ("v_1", -1)]
        assert tr.nodes["z_1"].value.shape == (3,)

    def test_len(self):
        assert len(pyro.plate("s", 10, subsample_size=4)) == 4
        assert len(pyro.plate("s", 10)) == 10


# ============================================================================= aliases
class TestAliases:
    def test_iarange(self):
        def model():
            with pyro.iarange("data", 4) as idx:
                pyro.sample("z", dist.Normal(0.0, 1.0))
                return idx

        tr = run(model)
        assert frames_of(tr, "z") == [("data", -1, 4)]
        assert torch.equal(tr.nodes["_RETURN"].value, torch.arange(4))

    def test_iarange_subsample(self):
        with pyro.iarange("data", 8, subsample_size=2) as idx:
            assert idx.shape == (2,)

    def test_irange(self):
        assert list(pyro.irange("s", 3)) == [0, 1, 2]


# ========================================================================= shape errors
class TestShapeErrors:
    def test_wrong_shaped_obs_names_site_and_plate(self):
        def model():
            with pyro.plate("data_plate", 10):
                pyro.sample("my_obs", dist.Normal(0.0, 1.0), obs=torch.zeros(7))

        with pytest.raises(ValueError) as info:
            run(model)
        msg = str(info.value)
        assert "my_obs" in msg and "data_plate" in msg and "7" in msg and "10" in msg

    def test_wrong_shaped_obs_with_subsample_hints_indexing(self):
        def model():
            with pyro.plate("data_plate", 10, subsample_size=3):
                pyro.sample("my_obs", dist.Normal(0.0, 1.0), obs=torch.zeros(10))

        with pytest.raises(ValueError, match="my_obs"):
            run(model)

    def test_batch_clash_names_site_plate_sizes(self):
        def model():
            with pyro.plate("data_plate", 5):
                pyro.sample("my_site", dist.Normal(torch.zeros(3), 1.0))

        with pytest.raises(ValueError) as info:
            run(model)
        msg = str(info.value)
        assert "my_site" in msg and "data_plate" in msg and "3" in msg and "5" in msg
        assert get_stack() == []

    def test_log_prob_error_names_site(self):
        def model():
            with pyro.plate("p", 5):
                pyro.sample("z", dist.Normal(0.0, 1.0))

        # a value of the wrong size along the plate is caught at the site as the model runs
        with pytest.raises(ValueError, match="site 'z': plate 'p' has size 5 in the model but 3"):
            poutine.trace(_SubstituteValuesMessenger(model, data={"z": torch.zeros(3)})).get_trace()


def test_model_plate_without_subsampling_takes_guide_indices_under_replay():
    """Seed 002: the guide subsamples, the model's plate does not; under replay the model
    uses the guide's indices and scales by size / len(indices)."""
    data = torch.arange(10.0)

    def model():
        with pyro.plate("data", 10) as idx:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=data[idx])
        return idx

    def guide():
        with pyro.plate("data", 10, subsample_size=3) as idx:
            pass
        return idx

    gtr = poutine.trace(guide).get_trace()
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace()
    assert torch.equal(mtr.nodes["_RETURN"].value, gtr.nodes["_RETURN"].value)
    assert mtr.nodes["x"].scale == pytest.approx(10 / 3)
    assert mtr.nodes["x"].value.shape == (3,)


def test_replayed_indices_from_a_plate_of_another_size_are_not_adopted():
    def model():
        with pyro.plate("data", 10) as idx:
            pass
        return idx

    def guide():
        with pyro.plate("data", 5) as idx:
            pass
        return idx

    gtr = poutine.trace(guide).get_trace()
    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace()
    assert len(mtr.nodes["_RETURN"].value) == 10
