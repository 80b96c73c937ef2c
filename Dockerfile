# `docker build --target stream` builds the hot-graph stream job's image (k8s/charts/datacreek-stream);
# the default target, last, is the code location image.

# The stream job: PyFlink in its own environment (it pins its own Beam, protobuf and numpy, as
# .venv-flink does locally), Java for its embedded cluster, the Kafka connector the job loads.
FROM python:3.12-slim AS stream
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/datacreek
COPY requirements-flink.lock ./
RUN python -m venv .venv-flink && .venv-flink/bin/pip install --upgrade pip \
    && .venv-flink/bin/pip install -r requirements-flink.lock
ADD --checksum=sha256:5605c691d11a501382c383fecba37a7a552467da5ab7ba904ef5d6f3d62c5616 \
    https://repo1.maven.org/maven2/org/apache/flink/flink-sql-connector-kafka/5.0.0-2.2/flink-sql-connector-kafka-5.0.0-2.2.jar \
    flink-connectors/flink-sql-connector-kafka.jar
COPY datacreek_assets datacreek_assets
ENV PYTHONPATH=/opt/datacreek
EXPOSE 8081

# The code location image for Kubernetes (k8s/dagster/values.yaml): run workers and step pods.
FROM python:3.12-slim AS platform
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/datacreek
COPY requirements.lock requirements-nodeps.txt pyproject.toml ./
# llama.cpp verifies and evaluates GGUF files on CPU; training uses the CUDA build of torch.
# One instruction set for llama.cpp on every node (see LLAMA_CMAKE_ARGS in the Makefile).
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF" \
    pip install -r requirements.lock \
    && pip install --no-deps -r requirements-nodeps.txt
COPY . .
RUN pip install --no-deps -e .
ENV DATACREEK_PROFILE=prod DAGSTER_HOME=/opt/dagster/dagster_home
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-f", "definitions.py"]

