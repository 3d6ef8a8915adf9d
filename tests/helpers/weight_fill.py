"""The kit's weight-fill rules for tests; they live in :mod:`infra.weight_fill` (the stand-in
asset kit uses them too)."""
from infra.weight_fill import fill_module, fill_state_dict, sine_fill, splitmix_fill  # noqa: F401
