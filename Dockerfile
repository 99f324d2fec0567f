# labkit's producer and consumer services, for compose mode (compose/compose.yml).
# One image, two commands: `labkit serve producer` (the default) or `labkit serve consumer`.
# Configured by the same LABKIT_* variables as everywhere else (labkit/settings.py).
FROM python:3.11.16-slim-trixie

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin labkit

WORKDIR /src

# The dependencies first, from pyproject.toml (the same pins as a local install), in a
# layer of their own: a change to labkit's code does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir labkit && touch labkit/__init__.py \
    && pip install . \
    && rm -rf labkit build

# Then labkit itself.
COPY labkit ./labkit
RUN pip install --no-deps --force-reinstall . && rm -rf build

USER labkit
WORKDIR /home/labkit

# Inside a container the services listen on every interface; Compose publishes them on 127.0.0.1.
ENV LABKIT_HOST=0.0.0.0 \
    HEALTH_URL=http://127.0.0.1:6789/healthz
EXPOSE 6789 6788

# slim has no curl; /healthz answers 200 while the service runs (compose sets HEALTH_URL per service).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=12 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTH_URL'], timeout=2)"]

CMD ["labkit", "serve", "producer"]
