# CPU image of ppd.  Today it builds the command-line tool (`ppd generate`); the CUDA
# runtime image and the server entrypoint come with the server and CUDA backend.
# The model is not baked in: mount it, e.g. -v $PWD/models:/app/models.
FROM debian:bookworm-slim AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN apt-get update -qq && scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make CUDA=0 -j2

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libpcre2-8-0 libjansson4 \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home ppd
COPY --from=build /src/build/ppd /usr/local/bin/ppd
USER ppd
WORKDIR /app
ENTRYPOINT ["ppd"]
CMD ["generate", "--help"]
