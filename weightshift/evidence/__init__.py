"""The statistics the gates decide on: anytime-valid comparisons of the candidate with the
stable colour, and the sample sizes a stage needs.

- ``sequential``: the candidate's rate of an event (errors, refusals, blocks, slow first
  tokens) against the stable colour's, as a counting process (Lindon et al., KDD 2022), with
  an e-value and a confidence sequence that stay valid however often they are looked at;
  the difference of two bounded means (quality scores) by a normal-mixture confidence
  sequence (Howard et al., 2021).
- ``sample_size``: requests per arm to detect a regression, at a fixed horizon and with the
  sequential test, and the minimum duration of a stage at a request rate and share.

Pure functions of counts: nothing here reads AWS or the stack config. Imports only the
standard library and numpy.
"""
