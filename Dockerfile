# Builds the one `omoi` binary. Used by docker-compose.yml (`omoi serve`, `omoi worker`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin omoi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
# Not root: neither the API nor the commands the worker runs per task need it.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin omoi
COPY --from=build /src/target/release/omoi /usr/local/bin/omoi
COPY config /app/config
WORKDIR /app
USER omoi
ENV OMOI_ENV=production
EXPOSE 18000
ENTRYPOINT ["omoi"]
CMD ["serve"]
