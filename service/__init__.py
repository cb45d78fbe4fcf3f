"""revhpo: service."""

import os

# Exact reversal needs the reverse pass to recompute each gradient bit for bit. oneDNN's
# float32 CPU kernels can round differently in the forward and the reverse graph, so they are
# off unless the user chose otherwise before TensorFlow was first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
