"""Probe families: estimators of intermediate representations and weights (pure functions), each file with the glue
that runs it on a GreedyNet, registered in `greedy.registry.PROBES` (see context.py).
"""

# the family modules register their families in this order: the order of reports, `--analysis all` and `--help`
from greedy.analysis import probes, clustering, information, similarity, regions, spectrum  # noqa: F401, I001
from greedy.analysis import robustness, moments, chaos, anisotropy, connectivity  # noqa: F401, I001
from greedy.analysis.anisotropy import (
    anisotropy_indicator,
    gradient_moments,
    hutchinson_trace,
    noise_anisotropy,
    top_hessian_eigs,
)
from greedy.analysis.chaos import (
    chi1,
    chi1_at_fixed_point,
    correlation_map,
    eoc_curve,
    eoc_sigma_w,
    fixed_point_q,
    variance_map,
)
from greedy.analysis.clustering import (
    bin_units,
    binned_entropy,
    nc1,
    scatter_ratio,
    scatter_traces,
    silhouette,
)
from greedy.analysis.connectivity import barrier, interpolate_state, linear_path
from greedy.analysis.information import (
    gaussian_entropy,
    gaussian_mixture_entropy,
    reduce_dim,
    sp_mutual_information,
    sp_mutual_information_layers,
    sp_mutual_information_noisy,
)
from greedy.analysis.moments import (
    CovarianceSums,
    channel_vectors,
    effective_rank,
    normalized_sensitivity,
    signal_noise_moments,
)
from greedy.analysis.probes import knn_accuracy, linear_probe
from greedy.analysis.regions import line_regions, relu_pattern_fn
from greedy.analysis.robustness import implied_distance, noise_error_rates
from greedy.analysis.similarity import cka_matrix, linear_cka
from greedy.analysis.spectrum import esd, fit_power_law, weight_alpha, weight_matrices

__all__ = [
    "anisotropy_indicator",
    "barrier",
    "bin_units",
    "binned_entropy",
    "channel_vectors",
    "chi1",
    "chi1_at_fixed_point",
    "cka_matrix",
    "correlation_map",
    "CovarianceSums",
    "effective_rank",
    "eoc_curve",
    "eoc_sigma_w",
    "esd",
    "fit_power_law",
    "fixed_point_q",
    "gaussian_entropy",
    "gaussian_mixture_entropy",
    "gradient_moments",
    "hutchinson_trace",
    "implied_distance",
    "interpolate_state",
    "knn_accuracy",
    "line_regions",
    "linear_cka",
    "linear_path",
    "linear_probe",
    "nc1",
    "noise_anisotropy",
    "noise_error_rates",
    "normalized_sensitivity",
    "reduce_dim",
    "relu_pattern_fn",
    "scatter_ratio",
    "scatter_traces",
    "signal_noise_moments",
    "silhouette",
    "sp_mutual_information",
    "sp_mutual_information_layers",
    "sp_mutual_information_noisy",
    "top_hessian_eigs",
    "variance_map",
    "weight_alpha",
    "weight_matrices",
]
