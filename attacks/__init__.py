"""The server's attacks on an update, run by :func:`fedguard.audit.audit` against the client's own update.

Each module holds one attack and cites its paper; each registers in :data:`fedguard.attacks.base.ATTACKS`
(``fedguard audit --attack NAME``):

- :mod:`~fedguard.attacks.label_counts` (``LabelCounts``): per-class label counts from the head's update
  (Geng et al. 2021).
- :mod:`~fedguard.attacks.idlg` (``IDLG``): a single example's label from the sign of the head's gradient
  (Zhao et al. 2020).
- :mod:`~fedguard.attacks.fc_inversion` (``FCInversion``): inputs of a fully connected layer read exactly from its
  weight and bias gradients (Phong et al. 2018).
- :mod:`~fedguard.attacks.dlg` (``DLG``): Deep Leakage from Gradients, L-BFGS on dummy data (Zhu et al. 2019).
- :mod:`~fedguard.attacks.inverting_gradients` (``InvertingGradients``): cosine distance and total variation
  (Geiping et al. 2020), FedAvg's local steps unrolled.
- Malicious-server emulators, each crafting its model for the client's architecture first:
  :mod:`~fedguard.attacks.imprint` (Robbing the Fed, Fowl et al. 2022), :mod:`~fedguard.attacks.class_fishing` and
  :mod:`~fedguard.attacks.feature_fishing` (Wen et al. 2022), :mod:`~fedguard.attacks.mkor` (MKOR and its
  inconspicuous variant, Wang et al. 2024).

Across rounds: :mod:`~fedguard.attacks.disaggregation` recovers users' updates from securely aggregated sums
(Lam et al. 2021), on rounds :mod:`~fedguard.attacks.federation` reads or simulates. The models a malicious server
sends are crafted by :mod:`fedguard.attacks.craft`. Nothing is imported here: ``import fedguard.attacks`` stays cheap,
and each module loads when used.
"""
