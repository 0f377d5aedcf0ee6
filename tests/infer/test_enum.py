"""TraceEnum_ELBO against brute-force sums over every joint assignment of the discrete sites:
losses to float tolerance, gradients against autograd of the brute-force marginal."""

from __future__ import annotations

import itertools

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer import SVI, JitTraceEnum_ELBO, TraceEnum_ELBO, config_enumerate
from ember.poutine import enum, trace

K = 2


@pytest.fixture(autouse=True)
def _double():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    ember.clear_param_store()
    yield
    torch.set_default_dtype(old)


def _no_guide(*args, **kwargs):
    pass


def _grads(loss, names):
    return torch.autograd.grad(loss, [ember.get_param_store().unconstrained(n) for n in names])


def _check(elbo, model, guide, reference, names, *args):
    """loss and gradients of ``elbo`` equal those of ``reference()`` (the brute-force -ELBO
    computed from the constrained parameters read inside it)."""
    loss = elbo.differentiable_loss(model, guide, *args)
    ref = reference()
    assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-10), (loss.item(), ref.item())
    g = _grads(loss, names)
    g_ref = _grads(ref, names)
    for n, a, b in zip(names, g, g_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), (n, a, b)
    assert abs(elbo.loss(model, guide, *args) - ref.item()) < 1e-9


# ---- a mixture --------------------------------------------------------------------------------
DATA = torch.tensor([0.1, 2.0, -1.0, 0.7])


def mixture():
    w = ember.param("w", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
    locs = ember.param("locs", torch.tensor([-1.0, 1.5]))
    with ember.plate("data", len(DATA)):
        z = ember.sample("z", dist.Categorical(w))
        ember.sample("x", dist.Normal(locs[z], 1.0), obs=DATA)


def mixture_brute_force():
    w, locs = ember.param("w"), ember.param("locs")
    terms = []
    for zs in itertools.product(range(K), repeat=len(DATA)):
        z = torch.tensor(zs)
        terms.append((w[z].log() + dist.Normal(locs[z], 1.0).log_prob(DATA)).sum())
    return -torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize("mpn", [1, 2])
def test_mixture_exact(mpn):
    _check(TraceEnum_ELBO(max_plate_nesting=mpn), config_enumerate(mixture), _no_guide, mixture_brute_force, ["w", "locs"])


def test_max_plate_nesting_guessed():
    elbo = TraceEnum_ELBO()
    _check(elbo, config_enumerate(mixture), _no_guide, mixture_brute_force, ["w", "locs"])
    assert elbo.max_plate_nesting == 1


def test_enumerated_values_and_dims():
    tr = trace(enum(config_enumerate(mixture), first_available_dim=-2)).get_trace()
    z = tr.nodes["z"]
    assert z.infer["_enumerate_dim"] == -2
    assert z.value.shape == (K, 1)
    assert tr.nodes["x"].fn.batch_shape == (K, len(DATA))


# ---- an HMM of length 5 with markov ---------------------------------------------------------------
YS = torch.tensor([0.3, -0.5, 1.2, 2.0, 0.1])


def hmm(ys):
    init = ember.param("init", torch.tensor([0.6, 0.4]), constraint=dist.constraints.simplex)
    trans = ember.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=dist.constraints.simplex)
    locs = ember.param("hlocs", torch.tensor([-1.0, 1.0]))
    x = None
    for t in ember.markov(range(len(ys))):
        x = ember.sample(f"x_{t}", dist.Categorical(init if x is None else trans[x]))
        ember.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=ys[t])


def hmm_brute_force(ys=YS):
    init, trans, locs = ember.param("init"), ember.param("trans"), ember.param("hlocs")
    terms = []
    for xs in itertools.product(range(K), repeat=len(ys)):
        lp = init[xs[0]].log()
        for t in range(1, len(ys)):
            lp = lp + trans[xs[t - 1], xs[t]].log()
        lp = lp + dist.Normal(locs[list(xs)], 1.0).log_prob(ys).sum()
        terms.append(lp)
    return -torch.logsumexp(torch.stack(terms), 0)


def test_hmm_markov_exact():
    _check(TraceEnum_ELBO(max_plate_nesting=0), config_enumerate(hmm), _no_guide, hmm_brute_force, ["init", "trans", "hlocs"], YS)


def test_hmm_markov_uses_two_dims():
    tr = trace(enum(config_enumerate(hmm), first_available_dim=-1)).get_trace(YS)
    dims = [tr.nodes[f"x_{t}"].infer["_enumerate_dim"] for t in range(len(YS))]
    assert dims == [-1, -2, -1, -2, -1]
    tr = trace(enum(config_enumerate(hmm), first_available_dim=-1)).get_trace(torch.randn(40))
    assert {s.infer["_enumerate_dim"] for n, s in tr.nodes.items() if n.startswith("x_")} == {-1, -2}


def test_second_order_markov():
    def hmm2(ys):
        p = ember.param("p2", torch.softmax(torch.arange(float(K ** 3)).reshape(K, K, K).sin(), -1), constraint=dist.constraints.simplex)
        locs = ember.param("locs2", torch.tensor([-1.0, 1.0]))
        a = b = 0
        for t in ember.markov(range(len(ys)), history=2):
            a, b = b, ember.sample(f"x_{t}", dist.Categorical(p[a, b]))
            ember.sample(f"y_{t}", dist.Normal(locs[b], 1.0), obs=ys[t])

    def brute():
        p, locs = ember.param("p2"), ember.param("locs2")
        terms = []
        for xs in itertools.product(range(K), repeat=len(YS)):
            a = b = 0
            lp = 0.0
            for t, x in enumerate(xs):
                lp = lp + p[a, b, x].log() + dist.Normal(locs[x], 1.0).log_prob(YS[t])
                a, b = b, x
            terms.append(lp)
        return -torch.logsumexp(torch.stack(terms), 0)

    _check(TraceEnum_ELBO(max_plate_nesting=0), config_enumerate(hmm2), _no_guide, brute, ["p2", "locs2"], YS)
    tr = trace(enum(config_enumerate(hmm2), first_available_dim=-1)).get_trace(YS)
    assert len({tr.nodes[f"x_{t}"].infer["_enumerate_dim"] for t in range(len(YS))}) == 3


def test_recursive_markov_context():
    @ember.markov
    def step(t, x, ys):
        if t == len(ys):
            return
        trans = ember.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=dist.constraints.simplex)
        init = ember.param("init", torch.tensor([0.6, 0.4]), constraint=dist.constraints.simplex)
        locs = ember.param("hlocs", torch.tensor([-1.0, 1.0]))
        x = ember.sample(f"x_{t}", dist.Categorical(init if x is None else trans[x]))
        ember.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=ys[t])
        step(t + 1, x, ys)

    def model(ys):
        step(0, None, ys)

    _check(TraceEnum_ELBO(max_plate_nesting=0), config_enumerate(model), _no_guide, hmm_brute_force, ["init", "trans", "hlocs"], YS)
    tr = trace(enum(config_enumerate(model), first_available_dim=-1)).get_trace(YS)
    assert len({tr.nodes[f"x_{t}"].infer["_enumerate_dim"] for t in range(len(YS))}) == 2


# ---- discrete sites in nested plates ------------------------------------------------------------
X3 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3]])


def nested(x):
    pg = ember.param("pg", torch.tensor([0.4, 0.6]), constraint=dist.constraints.simplex)
    pu = ember.param("pu", torch.tensor([[0.9, 0.1], [0.2, 0.8]]), constraint=dist.constraints.simplex)
    pv = ember.param("pv", torch.tensor([[0.7, 0.3], [0.25, 0.75]]), constraint=dist.constraints.simplex)
    locs = ember.param("nlocs", torch.tensor([[-1.0, 0.5], [1.0, 2.0]]))
    g = ember.sample("g", dist.Categorical(pg))
    with ember.plate("a", 2, dim=-2):
        u = ember.sample("u", dist.Categorical(pu[g]))
        with ember.plate("b", 3, dim=-1):
            v = ember.sample("v", dist.Categorical(pv[u]))
            ember.sample("obs", dist.Normal(locs[u, v], 1.0), obs=x)


def nested_brute_force():
    pg, pu, pv, locs = (ember.param(n) for n in ("pg", "pu", "pv", "nlocs"))
    terms = []
    for g in range(K):
        for us in itertools.product(range(K), repeat=2):
            for vs in itertools.product(range(K), repeat=6):
                lp = pg[g].log()
                for a in range(2):
                    lp = lp + pu[g, us[a]].log()
                    for b in range(3):
                        v = vs[3 * a + b]
                        lp = lp + pv[us[a], v].log() + dist.Normal(locs[us[a], v], 1.0).log_prob(X3[a, b])
                terms.append(lp)
    return -torch.logsumexp(torch.stack(terms), 0)


def test_nested_plates_exact():
    _check(TraceEnum_ELBO(max_plate_nesting=2), config_enumerate(nested), _no_guide, nested_brute_force,
           ["pg", "pu", "pv", "nlocs"], X3)


def test_subsampled_plate_scales_the_marginal():
    def model(idx):
        w = ember.param("w", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
        locs = ember.param("locs", torch.tensor([-1.0, 1.5]))
        with ember.plate("data", len(DATA), subsample=idx):
            z = ember.sample("z", dist.Categorical(w))
            ember.sample("x", dist.Normal(locs[z], 1.0), obs=DATA[idx])

    idx = torch.tensor([1, 3])

    def brute():
        w, locs = ember.param("w"), ember.param("locs")
        x = DATA[idx]
        return -(len(DATA) / 2) * torch.logsumexp(w.log()[:, None] + dist.Normal(locs[:, None], 1.0).log_prob(x), 0).sum()

    _check(TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(model), _no_guide, brute, ["w", "locs"], idx)


# ---- enumeration in model and guide ----------------------------------------------------------------
def mg_model():
    pz = ember.param("pz", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
    py = ember.param("py", torch.tensor([[0.6, 0.4], [0.1, 0.9]]), constraint=dist.constraints.simplex)
    locs = ember.param("mlocs", torch.tensor([[-1.0, 0.0], [1.0, 2.5]]))
    z = ember.sample("z", dist.Categorical(pz))
    with ember.plate("data", len(DATA)):
        y = ember.sample("y", dist.Categorical(py[z]))
        ember.sample("x", dist.Normal(locs[z, y], 1.0), obs=DATA)


def mg_guide():
    qz = ember.param("qz", torch.tensor([0.45, 0.55]), constraint=dist.constraints.simplex)
    ember.sample("z", dist.Categorical(qz))


def mg_brute_force():
    pz, py, locs, qz = (ember.param(n) for n in ("pz", "py", "mlocs", "qz"))
    elbo = 0.0
    for z in range(K):
        terms = []
        for ys in itertools.product(range(K), repeat=len(DATA)):
            y = torch.tensor(ys)
            terms.append((py[z, y].log() + dist.Normal(locs[z, y], 1.0).log_prob(DATA)).sum())
        inner = pz[z].log() + torch.logsumexp(torch.stack(terms), 0) - qz[z].log()
        elbo = elbo + qz[z] * inner
    return -elbo


def test_enumeration_in_model_and_guide():
    _check(TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(mg_model), config_enumerate(mg_guide), mg_brute_force,
           ["pz", "py", "mlocs", "qz"])


def test_guide_enumeration_in_a_plate():
    def model():
        w = ember.param("w", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
        locs = ember.param("locs", torch.tensor([-1.0, 1.5]))
        with ember.plate("data", len(DATA)):
            z = ember.sample("z", dist.Categorical(w))
            ember.sample("x", dist.Normal(locs[z], 1.0), obs=DATA)

    def guide():
        q = ember.param("q", torch.softmax(torch.arange(float(len(DATA) * K)).reshape(-1, K).cos(), -1),
                        constraint=dist.constraints.simplex)
        with ember.plate("data", len(DATA)):
            ember.sample("z", dist.Categorical(q))

    def brute():
        w, locs, q = ember.param("w"), ember.param("locs"), ember.param("q")
        lp = w.log() + dist.Normal(locs, 1.0).log_prob(DATA[:, None])  # [N, K]
        return -(q * (lp - q.log())).sum()

    _check(TraceEnum_ELBO(max_plate_nesting=1), model, config_enumerate(guide), brute, ["w", "locs", "q"])


def test_model_site_more_global_than_guide_site_is_refused():
    def model():
        g = ember.sample("g", dist.Categorical(torch.tensor([0.5, 0.5])))
        with ember.plate("data", len(DATA)):
            z = ember.sample("z", dist.Categorical(torch.tensor([[0.3, 0.7], [0.6, 0.4]])[g]))
            ember.sample("x", dist.Normal(z.double(), 1.0), obs=DATA)

    def guide():
        with ember.plate("data", len(DATA)):
            ember.sample("z", dist.Categorical(torch.tensor([0.5, 0.5])))

    with pytest.raises(ValueError, match="'g'"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(model), config_enumerate(guide))


def test_continuous_guide_site_with_enumerated_model():
    """A reparameterised guide site and an enumerated model site: the loss at the sampled value
    equals the brute-force marginal at that value minus log q."""

    def model():
        loc = ember.sample("loc", dist.Normal(0.0, 2.0))
        w = ember.param("w", torch.tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
        with ember.plate("data", len(DATA)):
            z = ember.sample("z", dist.Categorical(w))
            ember.sample("x", dist.Normal(torch.stack([loc, -loc])[z], 1.0), obs=DATA)

    def guide():
        m = ember.param("m", torch.tensor(0.4))
        ember.sample("loc", dist.Normal(m, 0.5))

    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    ember.set_rng_seed(3)
    loss = elbo.differentiable_loss(config_enumerate(model), guide)
    ember.set_rng_seed(3)
    m = ember.param("m")
    loc = dist.Normal(m, 0.5).rsample()
    w = ember.param("w")
    locs = torch.stack([loc, -loc])
    marg = torch.logsumexp(w.log()[:, None] + dist.Normal(locs[:, None], 1.0).log_prob(DATA), 0).sum()
    ref = -(dist.Normal(0.0, 2.0).log_prob(loc) + marg - dist.Normal(m, 0.5).log_prob(loc))
    assert torch.allclose(loss, ref)
    for a, b in zip(_grads(loss, ["m", "w"]), _grads(ref, ["m", "w"])):
        assert torch.allclose(a, b)


def test_svi_step_with_enumeration_lowers_the_loss():
    svi = SVI(config_enumerate(mixture), _no_guide, ember.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    first = svi.step()
    for _ in range(30):
        last = svi.step()
    assert last < first


@pytest.mark.slow
def test_jit_trace_enum_elbo_matches_eager():
    import warnings

    model = config_enumerate(hmm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo = JitTraceEnum_ELBO(max_plate_nesting=0)
        for _ in range(3):
            loss = elbo.loss_and_grads(model, _no_guide, YS)
    assert abs(loss - hmm_brute_force().item()) < 1e-8
    names = ["init", "trans", "hlocs"]
    store = ember.get_param_store()
    for n in names:
        store.unconstrained(n).grad = None
    elbo.loss_and_grads(model, _no_guide, YS)
    got = [store.unconstrained(n).grad.clone() for n in names]
    ref = _grads(hmm_brute_force(), names)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-8)
    assert elbo.compile_status.startswith("compiled"), elbo.compile_status


def test_sequential_enumeration_in_the_guide():
    def guide():
        qz = ember.param("qz", torch.tensor([0.45, 0.55]), constraint=dist.constraints.simplex)
        ember.sample("z", dist.Categorical(qz))

    _check(TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(mg_model), config_enumerate(guide, default="sequential"),
           mg_brute_force, ["pz", "py", "mlocs", "qz"])


def test_sequential_enumeration_in_the_model_is_refused():
    def model():
        ember.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "sequential"})

    with pytest.raises(NotImplementedError, match="'z'"):
        TraceEnum_ELBO(max_plate_nesting=0).loss(model, _no_guide)


def test_vectorized_particles():
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=3, vectorize_particles=True)
    _check(elbo, config_enumerate(mixture), _no_guide, mixture_brute_force, ["w", "locs"])


# ---- Pyro's HMM example (model_2: sequences in a plate, markov inside, masks for lengths) -----------
def _hmm_example_data():
    g = torch.Generator().manual_seed(0)
    seqs = (torch.rand(3, 4, 2, generator=g) < 0.4).double()  # [sequences, time, tones]
    lengths = torch.tensor([4, 2, 3])
    return seqs, lengths


def hmm_example_model(sequences, lengths):
    hidden = 3
    probs_x = ember.param("probs_x", 0.9 * torch.eye(hidden) + 0.1 / hidden, constraint=dist.constraints.simplex)
    probs_y = ember.param("probs_y", torch.linspace(0.2, 0.7, hidden * 2).reshape(hidden, 2), constraint=dist.constraints.unit_interval)
    tones_plate = ember.plate("tones", sequences.shape[-1], dim=-1)
    with ember.plate("sequences", len(sequences), dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        for t in ember.markov(range(int(lengths.max()))):
            with ember.poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = ember.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
                with tones_plate:
                    ember.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[batch, t])


def hmm_example_forward(sequences, lengths):
    """The forward algorithm per sequence; a masked step contributes log(hidden) (its factors are 1)."""
    probs_x, probs_y = ember.param("probs_x"), ember.param("probs_y")
    hidden = probs_x.shape[0]
    total = 0.0
    for s in range(len(sequences)):
        alpha = None
        for t in range(int(lengths.max())):
            emit = dist.Bernoulli(probs_y).log_prob(sequences[s, t]).sum(-1)  # [hidden]
            trans = probs_x[0].log() if alpha is None else (alpha[:, None] + probs_x.log()).logsumexp(0)
            if t < lengths[s]:
                alpha = trans + emit if alpha is not None else probs_x[0].log() + emit
            else:
                alpha = alpha.logsumexp(0).expand(hidden).clone()  # every value, each with factor 1
        total = total + alpha.logsumexp(0)
    return -total


def test_pyro_hmm_example_model():
    seqs, lengths = _hmm_example_data()
    _check(TraceEnum_ELBO(max_plate_nesting=2), hmm_example_model, _no_guide, lambda: hmm_example_forward(seqs, lengths),
           ["probs_x", "probs_y"], seqs, lengths)
