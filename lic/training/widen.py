"""Start a wider model from a trained narrower one: the transforms grow from N_src to N channels,
y from M_src to M and g_s's 1/16-resolution block from N_s_src to N_s (each as wide or wider),
and a variable-rate model may change its number of modes.  For the architectures that say they
can be widened so (``widenable``: cheng2020-gmm, whose tensors this module knows by name).

Function-preserving ("net2net") widening: every tensor of the new model that has a y-sized (M)
dimension, or one derived from it (the attention blocks' M/2 hidden units, the context and hyper
features 2M, the entropy-parameter hidden widths 10M/3 and 8M/3, the 3KM mixture outputs), gets
the source tensor in the block of the old channels; the weights from NEW input channels to OLD
output channels are zero; the weights of new output channels keep the new model's random init
(so new channels differ from each other and can learn), scaled down (``new_scale``) in the
convolutions.  Every nonlinearity in Cheng 2020 is element-wise (LeakyReLU, ReLU, the attention
gate's sigmoid, residual sums) except (I)GDN, whose gamma gets the same zero block (in its
reparametrised storage), so the old channels compute exactly what they computed before: the
widened model's x_hat and the likelihoods of the old y and z channels are the source's.  New
channels start with no influence on them and learn their use in training.  The pixel-shuffle
convolutions need no special care: their output channel c * r^2 + j keeps its index.  New z
channels (N grows) get fresh density models in the entropy bottleneck.

Gains of a variable-rate model (``mode_gains``, the one rule ``init_from`` uses for every start):
with the same number of modes, mode i stays mode i and its log gain moves by half the log-ratio of
its new and old lambda (the gain grows like sqrt(lambda)); with another number of modes, each mode
takes the gain of its lambda on the source's learned curve (log gain piecewise linear in log
lambda between the source's modes, slope +-1/2 beyond them).  New channels take the mean over the
old ones.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lic.models.base import LicModel

GAIN_KEYS = {"log_gain": 0.5, "log_inv_gain": -0.5}   # parameter -> slope in log lambda


def check_widenable(src: LicModel, dst: LicModel) -> None:
    """Raise ValueError unless ``dst`` can start from ``src`` (same model, as wide or wider)."""
    s, d = src.config, dst.config
    for field in ("K", "context"):
        if getattr(s, field) != getattr(d, field):
            raise ValueError(f"init_from: the source has {field}={getattr(s, field)!r}, "
                             f"this run trains {field}={getattr(d, field)!r}")
    if s.M > d.M:
        raise ValueError(f"init_from: the source's y has {s.M} channels, more than this run's {d.M}")
    if s.N > d.N:
        raise ValueError(f"init_from: the source's transforms have N={s.N} channels, more than this run's {d.N}")
    if s.N_s > d.N_s:
        raise ValueError(f"init_from: the source's g_s has N_s={s.N_s} channels at 1/16, more than this run's {d.N_s}")
    if s.M != s.N_s and d.M == d.N_s:
        # the source's g_s starts with a learned 1x1 skip (M -> N_s) that an identity skip cannot hold
        raise ValueError(f"init_from: the source's g_s has M={s.M} != N_s={s.N_s} (a learned skip), "
                         f"this run M = N_s = {d.M} (an identity)")
    if (s.num_modes > 1) != (d.num_modes > 1):
        raise ValueError("init_from: a variable-rate model starts only from a variable-rate model, "
                         "a single-rate one only from a single-rate one")


def gains_for(log_gain: Tensor, src_lmbdas, new_lmbdas, slope: float) -> Tensor:
    """(modes_src, C) log gains -> (modes_new, C): each new lambda's point on the source's curve."""
    xs = np.log(np.asarray(src_lmbdas, dtype=np.float64))
    order = np.argsort(xs, kind="stable")
    xs, g = xs[order], log_gain.detach().double().cpu().numpy()[order]        # (modes_src, C)
    out = []
    for x in np.log(np.asarray(new_lmbdas, dtype=np.float64)):
        if x <= xs[0]:
            out.append(g[0] + slope * (x - xs[0]))
        elif x >= xs[-1]:
            out.append(g[-1] + slope * (x - xs[-1]))
        else:
            j = int(np.searchsorted(xs, x, side="right")) - 1                   # xs[j] <= x < xs[j+1]
            f = (x - xs[j]) / (xs[j + 1] - xs[j])
            out.append((1 - f) * g[j] + f * g[j + 1])
    return torch.tensor(np.stack(out), dtype=log_gain.dtype)


def mode_gains(log_gain: Tensor, src_lmbdas, new_lmbdas, slope: float, new_modes: int) -> Tensor:
    """(modes_src, C) log gains -> (new_modes, C), the rule in the module docstring.  Without
    lambdas on either side the modes stay as they are (their number must not change)."""
    src_lmbdas, new_lmbdas = tuple(src_lmbdas), tuple(new_lmbdas)
    if not src_lmbdas or not new_lmbdas:
        if new_modes != log_gain.shape[0]:
            raise ValueError("init_from: a variable-rate model changes its number of modes only when "
                             "both the source and this run name their lambdas")
        return log_gain.detach().clone()
    if len(src_lmbdas) == len(new_lmbdas):
        shift = slope * np.log(np.asarray(new_lmbdas, dtype=np.float64) / np.asarray(src_lmbdas, dtype=np.float64))
        return log_gain.detach() + torch.tensor(shift, dtype=log_gain.dtype)[:, None]
    return gains_for(log_gain, src_lmbdas, new_lmbdas, slope)


def _index_map(key: str, dim: int, old: int, new: int, m_src: int, M: int, K: int) -> Tensor:
    """Where the source's index i of this dimension sits in the new tensor."""
    if key.startswith("entropy_parameters.0.") and dim == 1:          # cat([ctx (2M), psi (2M)])
        i = torch.arange(2 * m_src)
        return torch.cat([i, 2 * M + i])
    if key.startswith("entropy_parameters.4.") and dim == 0:          # (3, K, M) flattened
        p, k, c = torch.meshgrid(torch.arange(3), torch.arange(K), torch.arange(m_src), indexing="ij")
        return (p * K * M + k * M + c).reshape(-1)
    return torch.arange(old)                                          # the old channels first


def widened_state(src: LicModel, dst: LicModel, new_scale: float = 0.1) -> dict[str, Tensor]:
    """``dst``'s state dict with ``src`` embedded (see the module docstring); ``dst`` is unchanged."""
    check_widenable(src, dst)
    m_src, n_src, M, K = src.config.M, src.config.N, dst.config.M, dst.config.K
    s_state, out = src.state_dict(), {}
    extra = sorted(set(s_state) - set(dst.state_dict()))
    if extra:
        raise ValueError(f"init_from: the source has tensors this model lacks: {extra[:3]}")
    zero_of = _gdn_zeros(dst)
    for key, fresh in dst.state_dict().items():
        t = fresh.detach().clone()
        s = s_state.get(key)
        if key.startswith("entropy_bottleneck.") and s is not None and s.shape != t.shape:
            if n_src == dst.config.N:  # the same z: its coding tables as they are (load resizes them)
                out[key] = s.detach().clone()
                continue
            if key.split(".")[-1] in ("_offset", "_quantized_cdf", "_cdf_length"):
                out[key] = t           # coding tables: rebuilt by update() for the new channels
                continue
            t[: s.shape[0]] = s.to(t)  # z's learned densities: old channels copied, new ones fresh
        elif key in GAIN_KEYS:
            g = mode_gains(s, src.config.lmbdas, dst.config.lmbdas, GAIN_KEYS[key], t.shape[0])
            t[:, :m_src] = g.to(t)
            t[:, m_src:] = g.mean(dim=1, keepdim=True).to(t)
        elif s is None:
            # a 1x1 skip that exists only because M != N_s now (g_s's ResidualBlock(M, N_s)): the old
            # block's identity skip, on the old channels
            if not key.endswith((".skip.weight", ".skip.bias")):
                raise ValueError(f"init_from: no source tensor for {key}")
            t.zero_()
            if key.endswith(".weight"):
                n = min(src.config.N_s, m_src)
                t[torch.arange(n), torch.arange(n), 0, 0] = 1.0
        elif s.shape == t.shape:
            out[key] = s.detach().clone()
            continue
        else:
            if s.dim() != t.dim() or any(a > b for a, b in zip(s.shape, t.shape)):
                raise ValueError(f"init_from: {key} has shape {tuple(s.shape)}, cannot widen to {tuple(t.shape)}")
            rows = _index_map(key, 0, s.shape[0], t.shape[0], m_src, M, K)
            if key.rsplit(".", 1)[0] + ".gamma" not in zero_of:    # GDN's new channels: fresh init
                t *= new_scale                                       # the new outputs' init
            if s.dim() == 1:
                t[rows] = s.to(t)
            else:
                cols = _index_map(key, 1, s.shape[1], t.shape[1], m_src, M, K)
                new_cols = torch.ones(t.shape[1], dtype=torch.bool)
                new_cols[cols] = False
                block = t[rows]                                      # (old rows, all cols, ...)
                block[:, cols] = s.to(t)
                block[:, new_cols] = zero_of.get(key, 0.0)           # old outputs ignore new inputs
                t[rows] = block
        out[key] = t
    return out


def _gdn_zeros(net: LicModel) -> dict[str, float]:
    """State-dict key of each (I)GDN gamma -> the stored value that means gamma = 0 (compressai
    keeps sqrt(gamma + pedestal), lower-bounded): what "no weight" is in that storage."""
    from compressai.layers import GDN

    zeros = {}
    for name, mod in net.named_modules():
        if isinstance(mod, GDN):
            zeros[f"{name}.gamma"] = float(mod.gamma_reparam.init(torch.zeros(1)).item())
    return zeros
