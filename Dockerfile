# The code location image for Kubernetes (k8s/dagster/values.yaml): run workers and step pods.
FROM python:3.12-slim
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
