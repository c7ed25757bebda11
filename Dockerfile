# The weightshift image. In every inference pod the init container runs `weightshift bundle
# pull ID DEST --serving-layout` in it (downloads a published bundle, checks every hash, links
# the serving layout) and the gateway sidecar runs `weightshift gateway` (in front of vLLM on
# localhost). Build it in CI (`docker build -t weightshift .`), push it to your registry and
# put its digest in weightshift:serving.pullerImage (the policy pack refuses an image that is
# not pinned by digest). Pin the base image by digest in your registry too. The gateway's
# wheels (uvloop, httptools, tokenizers) are binary: build for the nodes' architecture.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY weightshift ./weightshift
RUN pip install -c constraints.txt . && rm -rf /src

# The pods run as uid 1000 (numeric, so runAsNonRoot can verify it) with a read-only root
# filesystem; pulls go to the mounted volume, the gateway writes only /tmp (an emptyDir).
USER 1000:1000
WORKDIR /bundle
ENTRYPOINT ["weightshift"]
