"""The policy facade: `EmCoTPolicy`, its processor, `Trace`, and policy-folder I/O."""

from emcot.policy.policy import DEFAULT_POLICY, EmCoTPolicy

__all__ = ["DEFAULT_POLICY", "EmCoTPolicy"]
