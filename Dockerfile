# Builds the one `omoi` binary. Used by docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin omoi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/omoi /usr/local/bin/omoi
COPY config /app/config
WORKDIR /app
ENV OMOI_ENV=production
EXPOSE 18000
ENTRYPOINT ["omoi"]
CMD ["serve"]
