# MiTorch's Hydra configs, installed as the package mitorch.conf (pkg://mitorch.conf).
