"""The paper's Table 3 ablations: `mmssl` with one switch flipped (the switches are config keys, so
`--set` flips them on any MMSSL run, the official variant included)."""
from __future__ import annotations

from typing import Any

from mmbench.models.base import register
from mmbench.models.mmssl.model import MMSSL


def _ablation(name: str, doc: str, **flip: Any) -> type[MMSSL]:
    cls = type(f"MMSSL_{name.replace('-', '_')}", (MMSSL,), {
        "__doc__": doc, "defaults": dict(MMSSL.defaults, **flip), "__module__": __name__})
    return register(name)(cls)


MMSSLWithoutASL = _ablation("mmssl-wo-asl", "Table 3 w/o-ASL: no discriminator, no L_G.", adversarial=False)
MMSSLWithoutCL = _ablation("mmssl-wo-cl", "Table 3 w/o-CL: no cross-modal contrastive loss.", contrastive=False)
MMSSLWithoutGT = _ablation("mmssl-wo-gt", "Table 3 w/o-GT: real rows use A[u] instead of the Gumbel "
                           "transform (the ζ-term stays).", gumbel=False)
MMSSLGAE = _ablation("mmssl-rp-gae", "Table 3 r/p-GAE: L_G replaced by a graph-autoencoder "
                     "reconstruction of the observed rows from the relation rows.", generator="gae")
