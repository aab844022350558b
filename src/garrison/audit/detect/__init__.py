"""Detection: the collector's ``AfterCommit`` stage that turns logged events into alerts.

Correlation rules over sliding windows (correlation.py, windows.py), a learned service-to-service
baseline (baseline.py), single-event Sigma rules over gateway requests (sigma.py, webfields.py),
and the gate every alert passes: deduplication, rate limit, suppressions (alerts.py,
suppressions.py). ``Detector`` (detector.py) ties them together; ``suppressions_api`` (admin.py)
is the admin sub-API the collector registers.
"""

from garrison.audit.detect.admin import suppressions_api
from garrison.audit.detect.detector import Detector
from garrison.audit.detect.sigma import SigmaSetupError

__all__ = ["Detector", "SigmaSetupError", "suppressions_api"]
