"""A Hydra app for Hydra's own launcher suites run over the AzureML launcher: a job's command runs
it on a FakeNode (`python THIS_FILE --config-name NAME overrides...`). It composes the suites'
configs (hydra.test_utils.configs) and prints its config as the JSON line an app's final metrics
would be."""
import json

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base=None, config_path="pkg://hydra.test_utils.configs", config_name="compose")
def main(cfg: DictConfig) -> None:
    print(json.dumps(OmegaConf.to_container(cfg, resolve=False)))


if __name__ == "__main__":
    main()
