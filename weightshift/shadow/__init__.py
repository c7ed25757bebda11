"""The shadow comparison: what the candidate would have answered against what users got,
read from the pairs the gateways write (``weightshift/gateway/shadow.py``)."""
