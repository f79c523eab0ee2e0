"""The README's table of settings, rendered from the settings model so the two cannot drift.

``python -m scoring.settings_table`` prints it; paste it into the README's Configuration
section between :data:`BEGIN` and :data:`END` (a unit test checks that it is there, as
rendered).
"""

from __future__ import annotations

from pydantic.fields import FieldInfo

from scoring.settings import ENV, Settings

__all__ = ["BEGIN", "DEFAULTS", "END", "FLAGS", "render"]

BEGIN = "<!-- settings-table -->"
END = "<!-- /settings-table -->"

# Command-line flags that set a setting for one run, and the commands that have them.
FLAGS = {
    "ort_threads": "`--ort-threads` of `scoring stream run`",
    "spark_master": "`--master` of `scoring batch run` and `batch submit`",
    "kafka_bootstrap": "`--bootstrap` of `scoring stream run`, `model parity` and `model compare`",
    "kafka_config": "`--kafka-config` of the same commands",
}

# Defaults that are computed, or that mean more than their value, as a reader needs them.
DEFAULTS = {
    "home": "`.scoring` in the current folder",
    "jars_dir": "`infra/jars` of the checkout; installed from a wheel, `$SCORING_HOME/jars/spark`",
    "kafka_jars_dir": "`infra/kafka/jars` of the checkout; installed from a wheel, "
    "`$SCORING_HOME/jars/kafka`",
    "tracking_uri": "the embedded store, `sqlite:///$SCORING_HOME/mlflow.db`",
    "registry_uri": "the tracking URI",
    "kafka_bootstrap": "`bootstrap.servers` of the `kafka_config` file",
    "kafka_config": "none (plaintext)",
    "s3_endpoint": "none (AWS S3)",
    "aws_region": "the AWS SDKs' own; `us-east-1` with a custom endpoint",
}

_CONFIG_FILE = (
    "The TOML file of settings: `key = value` lines whose keys are the names in the first column."
)


def render() -> str:
    """The Markdown table: one row per setting, then the config file's own variable."""
    rows = [
        ["TOML key", "environment variable", "flag", "default", "meaning"],
        ["---"] * 5,
    ]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"The setting {name} has no description: give its Field one.")
        rows.append(
            [
                f"`{name}`",
                f"`{ENV[name]}`",
                FLAGS.get(name, "-"),
                _default(name, field),
                field.description,
            ]
        )
    rows.append(["-", f"`{ENV['config']}`", "-", "none", _CONFIG_FILE])
    return "\n".join("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows) + "\n"


def _default(name: str, field: FieldInfo) -> str:
    if name in DEFAULTS:
        return DEFAULTS[name]
    if field.default_factory is not None:
        raise ValueError(f"The default of {name} is computed: say what it is in DEFAULTS.")
    return "none" if field.default is None else f"`{field.default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


if __name__ == "__main__":
    print(BEGIN)
    print(render(), end="")
    print(END)
