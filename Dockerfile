# The TentMan billing bundle on the official image of the Airflow it is tested with (requirements.txt
# pins it): Airflow's image extended with a pip install of the tentman-billing wheel, nothing else.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

# The wheel, as `make dist` builds it (the package under include/: no DAGs, tests or dev tooling),
# built here so that `docker compose build` needs nothing but the checkout.
FROM ${AIRFLOW_IMAGE} AS wheel
COPY --chown=airflow:root pyproject.toml README.md LICENSE /tmp/tentman/
COPY --chown=airflow:root include /tmp/tentman/include
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist /tmp/tentman

FROM ${AIRFLOW_IMAGE}
# The image's own Airflow named with the wheel, as Airflow's docs advise when extending the image:
# the install adds what the package needs (no development tool) and never moves Airflow. The extras
# are the deployment's: the CeleryExecutor profile and StatsD metrics.
COPY --from=wheel /tmp/dist /tmp/dist
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
      "$(ls /tmp/dist/tentman_billing-*.whl)[celery,statsd]"
ENV AIRFLOW_HOME=/opt/airflow
# The DAG bundle: two thin files that import tentman (compose's AIRFLOW__CORE__DAGS_FOLDER). The
# plugin comes from the wheel's entry point; the compose init service runs deploy/airflow-init.sh.
COPY dags /opt/tentman/dags
COPY deploy/airflow-init.sh /opt/tentman/deploy/airflow-init.sh
# Preloads the billing tasks' imports in the scheduler / Celery workers before they fork tasks.
COPY config/airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py
