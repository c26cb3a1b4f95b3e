"""MMSSL (Wei et al., WWW'23): multi-modal self-supervised learning for recommendation.

Registers `mmssl` (the paper), `mmssl-official` (the authors' code, quirk for quirk) and the four Table 3
ablations. Where each part of the paper lives:

| paper                                                        | module            |
|--------------------------------------------------------------|-------------------|
| §3, the model top to bottom: Eqs. 2, 8–10, 12, 13, 14         | `model.py`        |
| Eq. 3, relation rows Â^m (kept factored: low-rank + sparse)   | `relation_rows.py`|
| Eq. 5, the real rows Ã (Gumbel transform + ζ·augmentation)    | `real_rows.py`    |
| Eqs. 4, 6–7, the discriminator, its losses, gradient penalty  | `discriminator.py`|
| Eq. 8, semantic-neighbour graphs; normalised graphs           | `graphs.py`       |
| Eq. 9, cross-modal attention                                  | `attention.py`    |
| Eq. 11, cross-modal contrastive loss                          | `contrastive.py`  |
| Table 3: r/p-GAE's loss; the four ablations                   | `gae.py`, `ablations.py` |
| the code's per-user batch sampling (spec §1.3)                | `sampler.py`      |
| the authors' code where it departs from the paper             | `official.py`     |

"The spec" is ../shared/reference/mmssl-official-code.md. The dense reference computation the package is
checked against lives frozen in tests/mmssl_oracle.py; the package itself has one code path.
"""
from mmbench.models.mmssl import ablations, official  # noqa: F401  (registers the models)
from mmbench.models.mmssl.model import MMSSL
from mmbench.models.mmssl.official import MMSSLOfficial

__all__ = ["MMSSL", "MMSSLOfficial"]
