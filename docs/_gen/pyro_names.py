"""Names of Pyro 1.x's public API (its main modules, outside ``pyro.contrib``), checked against
Ember when the site is built, so the "Coming from Pyro" page says what is not there yet as of the
code the site was built from. The lists are each module's ``__all__`` in pyro-ppl 1.9.2 (or, for a
module without one, the public names it defines), read in the peers environment; they are not
imported at build time (pyro-ppl is not a dependency of Ember)."""

from __future__ import annotations

import importlib

PYRO_API: dict[str, list[str]] = {
    "pyro": ["__version__", "barrier", "clear_param_store", "condition", "deterministic", "do", "enable_validation",
            "factor", "get_param_store", "iarange", "irange", "log", "markov", "module", "param", "plate", "plate_stack",
            "poutine", "random_module", "render_model", "sample", "set_rng_seed", "settings", "subsample",
            "validation_enabled"],
    "pyro.poutine": ["NonlocalExit", "Trace", "block", "broadcast", "collapse", "condition", "do", "enable_validation", "enum",
                    "equalize", "escape", "get_mask", "infer_config", "is_validation_enabled", "lift", "markov", "mask", "queue",
                    "reparam", "replay", "scale", "seed", "substitute", "trace", "uncondition", "unwrap"],
    "pyro.infer": ["CSIS", "ELBO", "EmpiricalMarginal", "EnergyDistance", "HMC", "IMQSteinKernel", "Importance",
                  "JitTraceEnum_ELBO", "JitTraceGraph_ELBO", "JitTraceMeanField_ELBO", "JitTrace_ELBO", "MCMC", "MHResampler",
                  "NUTS", "Predictive", "RBFSteinKernel", "RandomWalkKernel", "RenyiELBO", "ReweightedWakeSleep", "SMCFilter",
                  "SVGD", "SVI", "TraceEnum_ELBO", "TraceGraph_ELBO", "TraceMeanField_ELBO", "TracePosterior",
                  "TracePredictive", "TraceTMC_ELBO", "TraceTailAdaptive_ELBO", "Trace_ELBO", "Trace_MMD", "WeighedPredictive",
                  "config_enumerate", "enable_validation", "infer_discrete", "is_validation_enabled"],
    "pyro.infer.autoguide": ["AutoCallable", "AutoContinuous", "AutoDelta", "AutoDiagonalNormal", "AutoDiscreteParallel", "AutoGaussian",
                            "AutoGuide", "AutoGuideList", "AutoHierarchicalNormalMessenger", "AutoIAFNormal", "AutoLaplaceApproximation",
                            "AutoLowRankMultivariateNormal", "AutoMessenger", "AutoMultivariateNormal", "AutoNormal",
                            "AutoNormalMessenger", "AutoNormalizingFlow", "AutoRegressiveMessenger", "AutoStructured", "init_to_feasible",
                            "init_to_generated", "init_to_mean", "init_to_median", "init_to_sample", "init_to_uniform", "init_to_value",
                            "mean_field_entropy"],
    "pyro.infer.reparam": ["AutoReparam", "ConjugateReparam", "DiscreteCosineReparam", "GumbelSoftmaxReparam", "HaarReparam",
                          "LatentStableReparam", "LinearHMMReparam", "LocScaleReparam", "MinimalReparam", "NeuTraReparam",
                          "ProjectedNormalReparam", "SplitReparam", "StableReparam", "StructuredReparam", "StudentTReparam",
                          "SymmetricStableReparam", "TransformReparam", "UnitJacobianReparam"],
    "pyro.infer.mcmc": ["ArrowheadMassMatrix", "BlockMassMatrix", "HMC", "MCMC", "NUTS", "RandomWalkKernel", "StreamingMCMC"],
    "pyro.infer.importance": ["Importance", "LogWeightsMixin", "psis_diagnostic", "vectorized_importance_weights"],
    "pyro.infer.util": ["CloneMixin", "Dice", "MultiFrameTensor", "check_fully_reparametrized", "compute_site_dice_factor",
                       "enable_validation", "get_dependent_plate_dims", "get_plate_stacks", "is_validation_enabled",
                       "plate_log_prob_sum", "torch_backward", "torch_exp", "torch_item", "torch_sum", "validation_enabled",
                       "zero_grads"],
    "pyro.infer.inspect": ["get_dependencies", "render_model"],
    "pyro.nn": ["AutoRegressiveNN", "ConditionalAutoRegressiveNN", "ConditionalDenseNN", "DenseNN", "MaskedLinear",
               "PyroModule", "PyroModuleList", "PyroParam", "PyroSample", "pyro_method"],
    "pyro.optim": ["ASGD", "Adadelta", "Adafactor", "Adagrad", "AdagradRMSProp", "Adam", "AdamW", "Adamax", "ChainedScheduler",
                  "ClippedAdam", "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR", "DCTAdam",
                  "ExponentialLR", "HorovodOptimizer", "LRScheduler", "LambdaLR", "LinearLR", "MultiStepLR", "MultiplicativeLR",
                  "Muon", "NAdam", "OneCycleLR", "PolynomialLR", "PyroLRScheduler", "PyroOptim", "RAdam", "RMSprop",
                  "ReduceLROnPlateau", "Rprop", "SGD", "SequentialLR", "SparseAdam", "StepLR", "_LRScheduler"],
    "pyro.distributions": ["AVFMultivariateNormal", "AffineBeta", "AsymmetricLaplace", "Bernoulli", "Beta", "BetaBinomial", "Binomial",
                          "Categorical", "Cauchy", "Chi2", "CoalescentRateLikelihood", "CoalescentTimes", "CoalescentTimesWithRate",
                          "ComposeTransformModule", "ConditionalDistribution", "ConditionalTransform", "ConditionalTransformModule",
                          "ConditionalTransformedDistribution", "ContinuousBernoulli", "Delta", "Dirichlet", "DirichletMultinomial",
                          "DiscreteHMM", "Distribution", "Empirical", "ExpandedDistribution", "Exponential", "ExponentialFamily",
                          "ExtendedBetaBinomial", "ExtendedBinomial", "FisherSnedecor", "FoldedDistribution", "Gamma",
                          "GammaGaussianHMM", "GammaPoisson", "GaussianHMM", "GaussianMRF", "GaussianScaleMixture", "GeneralizedPareto",
                          "Geometric", "GroupedNormalNormal", "Gumbel", "HalfCauchy", "HalfNormal", "ImproperUniform", "Independent",
                          "IndependentHMM", "InverseGamma", "Kumaraswamy", "LKJ", "LKJCholesky", "LKJCorrCholesky", "Laplace",
                          "LinearHMM", "LogNormal", "LogNormalNegativeBinomial", "Logistic", "LogisticNormal",
                          "LowRankMultivariateNormal", "MaskedDistribution", "MaskedMixture", "MixtureOfDiagNormals",
                          "MixtureOfDiagNormalsSharedCovariance", "MixtureSameFamily", "Multinomial", "MultivariateNormal",
                          "MultivariateStudentT", "NanMaskedMultivariateNormal", "NanMaskedNormal", "NegativeBinomial", "Normal",
                          "OMTMultivariateNormal", "OneHotCategorical", "OneHotCategoricalStraightThrough", "OneOneMatching",
                          "OneTwoMatching", "OrderedLogistic", "Pareto", "Poisson", "ProjectedNormal", "Rejector", "RelaxedBernoulli",
                          "RelaxedBernoulliStraightThrough", "RelaxedOneHotCategorical", "RelaxedOneHotCategoricalStraightThrough",
                          "SineBivariateVonMises", "SineSkewed", "SkewLogistic", "SoftAsymmetricLaplace", "SoftLaplace", "SpanningTree",
                          "Stable", "StableWithLogProb", "StudentT", "TorchDistribution", "TransformModule", "TransformedDistribution",
                          "TruncatedPolyaGamma", "Uniform", "Unit", "VonMises", "VonMises3D", "Weibull", "Wishart",
                          "ZeroInflatedDistribution", "ZeroInflatedNegativeBinomial", "ZeroInflatedPoisson", "constraints",
                          "enable_validation", "is_validation_enabled", "kl", "transforms", "validation_enabled"],
    "pyro.distributions.transforms": ["AbsTransform", "AffineAutoregressive", "AffineCoupling", "AffineTransform", "BatchNorm",
                                     "BlockAutoregressive", "CatTransform", "CholeskyTransform", "ComposeTransform", "ComposeTransformModule",
                                     "ConditionalAffineAutoregressive", "ConditionalAffineCoupling", "ConditionalGeneralizedChannelPermute",
                                     "ConditionalHouseholder", "ConditionalMatrixExponential", "ConditionalNeuralAutoregressive",
                                     "ConditionalPlanar", "ConditionalRadial", "ConditionalSpline", "ConditionalSplineAutoregressive",
                                     "CorrCholeskyTransform", "CorrLCholeskyTransform", "CorrMatrixCholeskyTransform",
                                     "CumulativeDistributionTransform", "DiscreteCosineTransform", "ELUTransform", "ExpTransform",
                                     "GeneralizedChannelPermute", "HaarTransform", "Householder", "IndependentTransform", "LeakyReLUTransform",
                                     "LowerCholeskyAffine", "LowerCholeskyTransform", "MatrixExponential", "NeuralAutoregressive", "Normalize",
                                     "OrderedTransform", "Permute", "Planar", "Polynomial", "PositiveDefiniteTransform", "PositivePowerTransform",
                                     "PowerTransform", "Radial", "ReshapeTransform", "SigmoidTransform", "SimplexToOrderedTransform",
                                     "SoftmaxTransform", "SoftplusLowerCholeskyTransform", "SoftplusTransform", "Spline", "SplineAutoregressive",
                                     "SplineCoupling", "StackTransform", "StickBreakingTransform", "Sylvester", "TanhTransform", "Transform",
                                     "affine_autoregressive", "affine_coupling", "batchnorm", "block_autoregressive",
                                     "conditional_affine_autoregressive", "conditional_affine_coupling", "conditional_generalized_channel_permute",
                                     "conditional_householder", "conditional_matrix_exponential", "conditional_neural_autoregressive",
                                     "conditional_planar", "conditional_radial", "conditional_spline", "conditional_spline_autoregressive", "elu",
                                     "generalized_channel_permute", "householder", "identity_transform", "iterated", "leaky_relu",
                                     "matrix_exponential", "neural_autoregressive", "permute", "planar", "polynomial", "radial", "spline",
                                     "spline_autoregressive", "spline_coupling", "sylvester"],
    "pyro.distributions.constraints": ["Constraint", "MixtureSameFamilyConstraint", "boolean", "cat", "corr_cholesky", "corr_cholesky_constraint",
                                      "corr_matrix", "dependent", "dependent_property", "greater_than", "greater_than_eq", "half_open_interval",
                                      "independent", "integer", "integer_interval", "interval", "is_dependent", "less_than", "lower_cholesky",
                                      "lower_triangular", "multinomial", "nonnegative", "nonnegative_integer", "one_hot", "ordered_vector",
                                      "positive", "positive_definite", "positive_integer", "positive_ordered_vector", "positive_semidefinite",
                                      "real", "real_vector", "simplex", "softplus_lower_cholesky", "softplus_positive", "sphere", "square", "stack",
                                      "symmetric", "unit_interval", "unit_lower_cholesky"],
    "pyro.ops.stats": ["autocorrelation", "autocovariance", "crps_empirical", "effective_sample_size", "energy_score_empirical",
                      "fit_generalized_pareto", "gelman_rubin", "hpdi", "pi", "quantile", "resample", "split_gelman_rubin", "waic",
                      "weighed_quantile"],
    "pyro.ops.special": ["get_quad_rule", "log_I1", "log_beta", "log_binomial", "safe_log", "sparse_multinomial_likelihood"],
    "pyro.ops.welford": ["WelfordArrowheadCovariance", "WelfordCovariance"],
    "pyro.ops.linalg": ["determinant_3d", "eig_3d", "ignore_torch_deprecation_warnings", "inv3d", "rinverse"],
    "pyro.ops.tensor_utils": ["as_complex", "block_diag_embed", "block_diagonal", "broadcast_tensors_without_dim", "cholesky_solve",
                             "convolve", "dct", "haar_transform", "idct", "inverse_haar_transform", "matmul", "matvecmul", "next_fast_len",
                             "periodic_cumsum", "periodic_features", "periodic_repeat", "precision_to_scale_tril", "repeated_matmul",
                             "safe_cholesky", "safe_normalize", "triangular_solve"],
    "pyro.ops.streaming": ["CountMeanStats", "CountMeanVarianceStats", "CountStats", "StackStats", "StatsOfDict", "StreamingStats"],
    "pyro.util": ["ExperimentalWarning", "check_if_enumerated", "check_model_guide_match", "check_site_shape",
                 "check_traceenum_requirements", "check_traces_match", "get_rng_state", "ignore_experimental_warning",
                 "ignore_jit_warnings", "jit_iter", "optional", "save_visualization", "set_rng_seed", "set_rng_state", "timed",
                 "torch_float", "torch_isinf", "torch_isnan", "warn_if_inf", "warn_if_nan"],
    "pyro.poutine.util": ["all_escape", "discrete_escape", "enable_validation", "enum_extend", "is_validation_enabled", "mc_extend",
                         "prune_subsample_sites", "site_is_factor", "site_is_subsample"],
    "pyro.params.param_store": ["ParamStoreDict", "StateDict", "module_from_param_with_module_name", "normalize_param_name",
                               "param_with_module_name", "user_param_name"],
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
