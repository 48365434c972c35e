# The TentMan billing bundle on Airflow, with its pinned requirements (requirements.lock).
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tentman
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock
COPY include ./include
COPY dags ./dags
COPY plugins ./plugins
COPY deploy ./deploy
RUN pip install --no-cache-dir --no-deps -e .
ENV AIRFLOW_HOME=/opt/airflow
# Preloads the billing tasks' imports in the scheduler / Celery workers before they fork tasks.
COPY config/airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py
