"""fedguard: client-side defensive auditing for federated learning.

A client checks what a server sends before training on it, and what its own
update would reveal before uploading it. The entry points:

- :func:`fedguard.inspect.inspect_model`: signature checks of a received
  global model (``fedguard inspect``); returns an
  :class:`~fedguard.types.InspectionReport` with a verdict and findings.
- :func:`fedguard.audit.audit`: self-attack of the pending update with the
  server's attacks (``fedguard audit``); returns an
  :class:`~fedguard.types.AuditReport` with leakage levels and a verdict.
- :class:`fedguard.update.Update` and :func:`fedguard.update.compute_update`:
  an update to audit, computed here or elsewhere; the client-side defenses
  it can be computed under are in :mod:`fedguard.defenses` (``DPSGD``,
  ``Pruning``, ``GaussianNoise``).
- :mod:`fedguard.exposure`: after how many rounds secure aggregation stops
  hiding an update; :mod:`fedguard.attacks.disaggregation` attacks the
  aggregates themselves (``fedguard disaggregate``).
- :func:`fedguard.attacks.craft.craft`: the malicious models a server would
  send, for red-team tests (``fedguard craft``).
- :mod:`fedguard.reports`: text, JSON, SARIF and HTML output
  (:func:`~fedguard.reports.render` for an inspection,
  :func:`~fedguard.reports.audit_base.render_audit` for an audit,
  :func:`~fedguard.reports.audit_json.audit_to_dict` for an audit's JSON
  document as Python values, :func:`~fedguard.reports.load_schema` for the
  JSON schemas).

The command line (``fedguard --help``) wraps the same functions; README.md
and docs/ say what each checks and the measurements behind its thresholds.
"""

__version__ = "0.1.0"
