"""``smoothjax.sequential``, kept as it was imported before ``smoothjax.certification`` became a package.

Sequential certification lives in ``smoothjax.certification.sequential`` (and ``certify_sequential`` in the flat
``smoothjax.certification`` namespace); this module re-exports its public names so that existing imports keep
working, the way optax keeps old paths importable.
"""

from smoothjax.certification.sequential import (FUTILITY_LEVEL, FUTILITY_RULES, METHODS, SequentialCertificate,
                                                check_futility, check_radii, certify_sequential,
                                                projected_failures_table)

__all__ = ["FUTILITY_LEVEL", "FUTILITY_RULES", "METHODS", "SequentialCertificate", "certify_sequential",
           "check_futility", "check_radii", "projected_failures_table"]
