"""A faust app with the scoring agent, as a team would write it; run by test_faust_agent.

    python faust_app.py worker --without-web

Its settings come from the environment the test sets (FAUST_APP_*).
"""

import os

import faust
from scoring.stream.faust_agent import add_scoring_agent

env = os.environ
app = faust.App(
    env["FAUST_APP_ID"],
    broker=f"kafka://{env['FAUST_APP_BOOTSTRAP']}",
    store="memory://",
    web_enabled=False,
    topic_partitions=3,
    topic_replication_factor=1,
)
add_scoring_agent(
    app,
    env["FAUST_APP_MODEL"],
    env["FAUST_APP_INPUT"],
    output_topic=env["FAUST_APP_OUTPUT"],
    dlq_topic=env["FAUST_APP_DLQ"],
    batch_size=50,
    within=0.2,
)

if __name__ == "__main__":
    app.main()
