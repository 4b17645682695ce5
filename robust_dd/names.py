"""The choices of the config's string fields: one source, imported by `config` (which validates
and documents them) and by the modules that implement them, so that loading a config loads no
model or kernel code. A leaf: it imports nothing.
"""

# --method (`methods.METHODS` holds one record per name, in this order).
METHODS = ("kip", "dc", "dsa", "lcmat", "mtt")
# Kernels (`kernels`): named neural-tangents architectures and their infinite-width kernels.
ARCHITECTURES = ("fc", "conv")
KERNELS = ("ntk", "nngp")
# Networks (`models`); cross-architecture evaluation's; the first convolution's padding.
NETWORKS = ("auto", "convnet", "mlp", "alexnet", "vgg11", "resnet18", "vit")
EVAL_NETWORKS = ("convnet", "alexnet", "vgg11", "resnet18", "vit", "mlp")
PADDINGS = ("reference", "same")
# The ConvNet's convolution (`convolutions`).
CONV_IMPLS = ("auto", "patches", "lax", "shifted", "winograd", "winograd4")
# Gradient matching's distance (`matching`); LCMat's Hessian-vector products (`curvature`).
METRICS = ("ours", "mse", "cos")
HVP_MODES = ("exact", "finite_difference")
# The set's optimiser and the clusters' masses in the robust objective (`distill`).
OPTIMIZERS = ("adam", "sgd")
CLUSTER_MASSES = ("uniform", "size")
# What k-means clusters the real data on (`cluster`).
CLUSTER_FEATURES = ("pixels", "random", "embed")
# KIP's loss on the KRR predictions (`krr`).
KRR_LOSSES = ("mse", "platt")
# The rare-subgroup benchmark's transformations (`data`).
SUBGROUPS = ("invert", "rotate", "color")
# Coreset selection (`select`).
SELECT_METHODS = ("random", "kmeans_centers", "herding", "kcenter", "sensitivity",
                  "sensitivity_krr", "lcmat")
