"""Names of Pyro 1.x's public API (its documented modules, outside ``pyro.contrib``), checked against
Ember when the site is built, so the "Coming from Pyro" page says what is not there yet as of the
code the site was built from."""

from __future__ import annotations

import importlib

PYRO_API: dict[str, list[str]] = {
    "pyro": ["sample", "param", "module", "random_module", "plate", "plate_stack", "subsample", "factor",
             "deterministic", "condition", "do", "markov", "barrier", "get_param_store", "clear_param_store",
             "set_rng_seed", "enable_validation", "validation_enabled", "render_model", "iarange", "irange"],
    "pyro.poutine": ["trace", "replay", "block", "condition", "do", "uncondition", "mask", "scale", "seed",
                     "substitute", "lift", "escape", "infer_config", "enum", "markov", "queue", "reparam",
                     "broadcast", "collapse", "equalize", "guide_to_trace"],
    "pyro.infer": ["SVI", "ELBO", "Trace_ELBO", "TraceGraph_ELBO", "TraceMeanField_ELBO", "TraceEnum_ELBO",
                   "JitTrace_ELBO", "JitTraceGraph_ELBO", "JitTraceEnum_ELBO", "JitTraceMeanField_ELBO",
                   "RenyiELBO", "TraceTMC_ELBO", "TraceTailAdaptive_ELBO", "EnergyDistance", "ReweightedWakeSleep",
                   "Importance", "EmpiricalMarginal", "Predictive", "WeighedPredictive", "MCMC", "NUTS", "HMC",
                   "SMCFilter", "CSIS", "SVGD", "RBFSteinKernel", "IMQSteinKernel", "infer_discrete",
                   "config_enumerate", "TracePosterior"],
    "pyro.infer.autoguide": ["AutoGuide", "AutoDelta", "AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal",
                             "AutoLowRankMultivariateNormal", "AutoLaplaceApproximation", "AutoIAFNormal",
                             "AutoGuideList", "AutoCallable", "AutoContinuous", "AutoNormalMessenger",
                             "AutoDiscreteParallel", "AutoStructured", "AutoGaussian",
                             "AutoHierarchicalNormalMessenger", "AutoRegressiveMessenger", "AutoMessenger",
                             "init_to_feasible", "init_to_median", "init_to_sample", "init_to_uniform",
                             "init_to_value", "init_to_mean", "init_to_generated"],
    "pyro.infer.reparam": ["LocScaleReparam", "TransformReparam", "StudentTReparam", "SoftmaxReparam",
                           "ProjectedNormalReparam", "DiscreteCosineReparam", "HaarReparam", "StableReparam",
                           "LatentStableReparam", "SymmetricStableReparam", "ConjugateReparam", "SplitReparam",
                           "GumbelSoftmaxReparam", "NeuTraReparam", "LinearHMMReparam", "GaussianHMMReparam"],
    "pyro.nn": ["PyroModule", "PyroParam", "PyroSample", "pyro_method", "DenseNN", "ConditionalDenseNN",
                "AutoRegressiveNN", "ConditionalAutoRegressiveNN", "MaskedLinear"],
    "pyro.optim": ["Adam", "ClippedAdam", "SGD", "AdagradRMSProp", "DCTAdam", "PyroOptim", "PyroLRScheduler",
                   "ExponentialLR", "StepLR", "ReduceLROnPlateau", "HorovodOptimizer"],
    "pyro.distributions": ["AffineBeta", "AsymmetricLaplace", "AVFMultivariateNormal", "BetaBinomial",
                           "CoalescentTimes", "ConditionalTransformedDistribution", "Delta", "DirichletMultinomial",
                           "DiscreteHMM", "Empirical", "ExtendedBetaBinomial", "ExtendedBinomial",
                           "FoldedDistribution", "GammaGaussianHMM", "GammaPoisson", "GaussianHMM", "GaussianMRF",
                           "GaussianScaleMixture", "ImproperUniform", "IndependentHMM", "InverseGamma", "LinearHMM",
                           "LKJ", "LKJCorrCholesky", "Logistic", "MaskedMixture", "MixtureOfDiagNormals",
                           "MultivariateStudentT", "OrderedLogistic", "ProjectedNormal", "Rejector",
                           "RelaxedBernoulliStraightThrough", "RelaxedOneHotCategoricalStraightThrough",
                           "SineBivariateVonMises", "SineSkewed", "SkewLogistic", "SoftAsymmetricLaplace",
                           "SoftLaplace", "SpanningTree", "Stable", "TruncatedPolyaGamma", "Unit", "VonMises3D",
                           "ZeroInflatedDistribution", "ZeroInflatedNegativeBinomial", "ZeroInflatedPoisson",
                           "ZeroSumNormal"],
    "pyro.ops.stats": ["autocorrelation", "autocovariance", "effective_sample_size", "gelman_rubin",
                       "split_gelman_rubin", "hpdi", "pi", "quantile", "resample", "waic", "fit_generalized_pareto",
                       "crps_empirical", "energy_score_empirical", "weighed_quantile"],
}


def coverage_table() -> str:
    """A Markdown table: per Pyro module, how many of these names Ember has, and the missing ones."""
    rows = ["| Pyro module | Ember has | not there yet |", "|---|---:|---|"]
    for module, names in PYRO_API.items():
        ember_module = "ember" + module[len("pyro"):]
        try:
            mod = importlib.import_module(ember_module)
        except ImportError:
            rows.append(f"| `{module}` | 0 / {len(names)} | the whole module |")
            continue
        missing = [n for n in names if not hasattr(mod, n)]
        rows.append(f"| `{module}` | {len(names) - len(missing)} / {len(names)} | "
                    + (", ".join(f"`{n}`" for n in missing) or "—") + " |")
    return "\n".join(rows) + "\n"
