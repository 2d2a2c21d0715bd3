# One image for every role: `mailman --role ...` picks the actors a container runs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    MAILMAN_HOST=0.0.0.0 MAILMAN_LOG_FORMAT=json

RUN useradd --create-home --uid 10001 mailman
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mailman ./mailman
RUN pip install --no-compile . && mkdir -p /data && chown mailman /data

USER mailman
WORKDIR /data
# 9292: HTTP (role api); 2525: SMTP submission (role smtp).
EXPOSE 9292 2525
# Health checks live in docker-compose.yml: only the api role serves HTTP.
CMD ["mailman"]
