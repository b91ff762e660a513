# Butter images, FROM scratch: the statically linked binary and nothing else
# (no base image is pulled, so this builds with no registry at all).
#
# The binaries are built on the host first (see README, "Containers"):
#   bash docker/build.sh            # static binaries into docker/bin, then the images
# or by hand:
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
#     --target x86_64-unknown-linux-gnu -p butter -p butter-introducer --bin butter --bin butter-introducer
#   (copy both from target/x86_64-unknown-linux-gnu/release/ into docker/bin/)
#   docker build --target butter -t butter:local .
#   docker build --target introducer -t butter-introducer:local .

FROM scratch AS butter
COPY docker/bin/butter /butter
# One volume for every replica of a scaled service: each container keeps its
# identity and store in a directory named after its host name.
ENV BUTTER_DATA_DIR=/data/{host}
VOLUME /data
EXPOSE 7400/udp
ENTRYPOINT ["/butter"]
CMD ["node"]

FROM scratch AS introducer
COPY docker/bin/butter-introducer /butter-introducer
ENV BUTTER_INTRODUCER_DATA_DIR=/data
VOLUME /data
EXPOSE 7401/udp
ENTRYPOINT ["/butter-introducer"]
