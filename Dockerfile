# The bundle with its pinned requirements (requirements.lock) on Python 3.11.
FROM python:3.11-slim
WORKDIR /opt/tentman
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock
COPY include ./include
COPY dags ./dags
COPY plugins ./plugins
RUN pip install --no-cache-dir --no-deps -e .
ENV AIRFLOW_HOME=/opt/airflow
