# The image the inference pods' init container runs: `weightshift bundle pull ID DEST
# --serving-layout` downloads a published bundle, checks every hash and links the serving
# layout. Build it in CI, push it to your registry and put its digest in
# weightshift:serving.pullerImage (the policy pack refuses an image that is not pinned by
# digest). Pin the base image by digest in your registry too.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY weightshift ./weightshift
RUN pip install -c constraints.txt . && rm -rf /src

# The pods run as uid 1000 with a read-only root filesystem; pulls go to the mounted volume.
USER 1000:1000
WORKDIR /bundle
ENTRYPOINT ["weightshift"]
