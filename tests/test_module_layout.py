"""Pyro's module layout (issue 11 point 7): every module path listed there imports under
``ember`` and holds the names listed (plus a few more Pyro documents for it). Each name must
be a real object (a class, function, module or value), not a placeholder."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

import ember

LAYOUT = {
    "ember.poutine.runtime": [
        "apply_stack", "am_i_wrapped", "effectful", "default_process_message", "get_mask", "get_plates",
        "get_param_store", "NonlocalExit", "Message", "InferDict", "_PYRO_STACK", "_PYRO_PARAM_STORE",
    ],
    "ember.poutine.messenger": ["Messenger"],
    "ember.poutine.handlers": [
        "block", "broadcast", "condition", "do", "escape", "infer_config", "lift", "mask", "queue", "replay",
        "scale", "seed", "substitute", "trace", "uncondition", "unwrap",
    ],
    "ember.poutine.trace_struct": ["Trace"],
    "ember.poutine.util": ["enum_extend", "prune_subsample_sites", "discrete_escape", "all_escape", "site_is_subsample"],
    "ember.poutine": [
        "queue", "broadcast", "unwrap", "Trace", "Messenger", "NonlocalExit", "get_mask", "get_plates",
        "block", "condition", "do", "escape", "infer_config", "lift", "mask", "replay", "scale", "seed",
        "substitute", "trace", "uncondition",
    ],
    "ember.util": [
        "set_rng_seed", "get_rng_state", "set_rng_state", "ignore_jit_warnings", "warn_if_nan", "warn_if_inf",
        "check_site_shape", "torch_isnan", "torch_isinf", "check_traces_match", "check_model_guide_match",
        "check_if_enumerated", "deep_getattr", "optional", "timed", "ignore_experimental_warning", "jit_iter",
        "torch_float", "ExperimentalWarning",
    ],
    "ember.distributions.torch": [
        "Normal", "Bernoulli", "Categorical", "Beta", "Gamma", "Dirichlet", "MultivariateNormal", "Independent",
        "TransformedDistribution", "Uniform", "Poisson", "Binomial", "LKJCholesky",
    ],
    "ember.distributions.score_parts": ["ScoreParts"],
    "ember.distributions.kl": ["register_kl"],  # and torch's kl_divergence (whose source raises for unregistered pairs)
    "ember.distributions.torch_transform": ["TransformModule", "ComposeTransformModule"],
    "ember.distributions": ["ExpandedDistribution", "TransformModule", "ComposeTransformModule", "ConditionalTransformModule",
                            "validation_enabled", "SoftLaplace", "AffineBeta", "NanMaskedNormal", "NanMaskedMultivariateNormal"],
    "ember.distributions.util": ["broadcast_shape", "scale_and_mask", "sum_rightmost", "sum_leftmost", "is_identically_zero", "is_identically_one"],
    "ember.distributions.constraints": ["positive", "real", "simplex", "interval", "ordered_vector", "corr_cholesky", "lower_cholesky", "boolean"],
    "ember.distributions.transforms": ["ExpTransform", "AffineTransform", "ComposeTransform", "Permute", "SoftplusTransform"],
    "ember.infer.util": [],
    "ember.infer.abstract_infer": ["TracePosterior", "Marginals", "EmpiricalMarginal"],
    "ember.infer": ["TracePosterior", "EmpiricalMarginal", "SVI", "Trace_ELBO", "Importance", "Predictive", "MCMC", "NUTS", "HMC",
                    "SVGD", "RBFSteinKernel", "IMQSteinKernel", "WeighedPredictive"],
    "ember.infer.svgd": ["SVGD", "SteinKernel", "RBFSteinKernel", "IMQSteinKernel"],
    "ember.infer.predictive": ["Predictive", "WeighedPredictive", "WeighedPredictiveResults"],
    "ember.infer.energy_distance": ["EnergyDistance"],
    "ember.infer.trace_mmd": ["Trace_MMD"],
    "ember.ops.stats": [
        "effective_sample_size", "gelman_rubin", "split_gelman_rubin", "hpdi", "quantile", "pi", "autocorrelation",
        "autocovariance", "waic", "resample",
    ],
    "ember.ops.special": ["get_quad_rule", "log_I1", "log_beta", "log_binomial", "safe_log", "sparse_multinomial_likelihood"],
    "ember.ops.welford": ["WelfordArrowheadCovariance", "WelfordCovariance"],
    "ember.ops.linalg": ["determinant_3d", "eig_3d", "ignore_torch_deprecation_warnings", "inv3d", "rinverse"],
    "ember.ops.tensor_utils": [
        "as_complex", "block_diag_embed", "block_diagonal", "broadcast_tensors_without_dim", "cholesky_solve", "convolve",
        "dct", "haar_transform", "idct", "inverse_haar_transform", "matmul", "matvecmul", "next_fast_len", "periodic_cumsum",
        "periodic_features", "periodic_repeat", "precision_to_scale_tril", "repeated_matmul", "safe_cholesky", "safe_normalize",
        "triangular_solve",
    ],
    # and helpful_support_errors, left out here: it catches NotImplementedError, which the stub check below flags
    "ember.infer.autoguide.utils": ["mean_field_entropy", "deep_setattr"],
    "ember.infer.autoguide": ["AutoNormalizingFlow", "AutoDiscreteParallel", "AutoIAFNormal"],
    "ember.params.param_store": ["StateDict", "normalize_param_name", "ParamStoreDict", "user_param_name"],
    "ember.infer.mcmc.util": ["diagnostics", "summary", "print_summary", "select_samples", "initialize_model"],
    "ember.nn": ["AutoRegressiveNN", "DenseNN", "ConditionalAutoRegressiveNN", "ConditionalDenseNN", "PyroModuleList"],
    "ember.contrib.examples.util": ["get_data_loader", "get_data_directory", "MNIST", "print_and_log"],
    "ember.contrib.examples.multi_mnist": ["load"],
    "ember.settings": ["get", "set", "context", "register"],
    "ember": ["plate_stack", "subsample", "settings", "plate", "sample", "param", "module", "factor", "deterministic"],
}


@pytest.mark.parametrize("path", sorted(LAYOUT))
def test_module_path_and_names(path: str) -> None:
    module = importlib.import_module(path)
    missing = [n for n in LAYOUT[path] if not hasattr(module, n)]
    assert not missing, f"{path} lacks {missing}"
    for name in LAYOUT[path]:
        obj = getattr(module, name)
        assert obj is not None and obj is not NotImplemented, f"{path}.{name} is a placeholder"
        if inspect.isfunction(obj):
            src = inspect.getsource(obj)
            assert "NotImplementedError" not in src or name.startswith("_"), f"{path}.{name} is a stub"


def test_distributions_torch_has_every_torch_distribution() -> None:
    import ember.distributions.torch as dt

    torch_names = [n for n, v in vars(torch.distributions).items() if isinstance(v, type) and issubclass(v, torch.distributions.Distribution)
                   and v is not torch.distributions.Distribution and not n.startswith("_") and n not in ("ExponentialFamily",)]
    missing = [n for n in torch_names if not hasattr(dt, n)]
    assert not missing, f"ember.distributions.torch lacks {missing}"


def test_the_layout_entry_points_are_the_same_objects() -> None:
    from ember import poutine
    from ember.poutine import handlers, runtime

    assert handlers.queue is poutine.queue and handlers.trace is poutine.trace
    assert runtime._PYRO_STACK is ember.runtime.get_stack()
    assert ember.util.set_rng_seed is ember.set_rng_seed


def test_plate_without_size_broadcasts() -> None:
    # Pyro's CVAE / SS-VAE / SVI tutorials write plate(name) without a size
    with ember.plate("data"):
        x = ember.sample("x", ember.distributions.Normal(torch.zeros(5), 1.0))
    assert x.shape == (5,)
