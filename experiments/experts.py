r"""Expert trajectories for trajectory matching (MTT): flags -> robust_dd.experts.

    python -m experiments.experts --dataset=mnist5k --num_experts=5 --epochs=15 \
        --workdir=runs/experts_mnist5k
    python -m experiments.distill --method=mtt --expert_dir=runs/experts_mnist5k --ipc=1

Trains --num_experts networks (the --net ConvNet, in one vmap) on the real training set with SGD
(constant --expert_lr, --expert_momentum, per-sample DSA) and writes experts.npz (every expert's
parameters after each epoch) and experts.json (the data and network flags it was made for; a
distillation with other flags refuses the buffer).
"""


from experiments import _common
from robust_dd import config as config_lib

config_from_flags, main = _common.config_driver(
    config_lib.ExpertsConfig, main_module=__name__,
    experiment="robust_dd.experts.experts_experiment",
    default_workdir="runs/experts_{c.data.dataset}_seed{c.seed}",
    main=("num_experts", "epochs", "expert_lr", "seed", "dataset", "zca", "net_width",
          "net_depth"))

if __name__ == "__main__":
  _common.run(main)
