"""The policy facade: `EmCoTPolicy`, its processor, `Trace`, and policy-folder I/O."""

from emcot.policy.policy import BUNDLED_POLICIES, DEFAULT_POLICY, SYNTHETIC_POLICY, EmCoTPolicy

__all__ = ["BUNDLED_POLICIES", "DEFAULT_POLICY", "SYNTHETIC_POLICY", "EmCoTPolicy"]
