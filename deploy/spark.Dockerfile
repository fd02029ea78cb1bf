# syntax=docker/dockerfile:1
#
# The image the chart's Spark jobs run (spark.image): the Quiver server image plus the `spark`
# extra (PySpark, whose package carries spark-submit and Spark's jars) and a Java 17 runtime.
# The serving image itself never carries PySpark. Build the Quiver image first, then:
#   docker build -f deploy/spark.Dockerfile --build-arg QUIVER_IMAGE=quiver:0.1.0 -t quiver-spark:0.1.0 .
ARG QUIVER_IMAGE=quiver:0.1.0
ARG JAVA_IMAGE=eclipse-temurin:17-jre-jammy

FROM ${JAVA_IMAGE} AS java

FROM ${QUIVER_IMAGE}
USER root
COPY --from=java /opt/java/openjdk /opt/java/openjdk
# The base image's pip installs into Quiver's environment (which has none of its own).
RUN python -m pip --python /opt/quiver/bin/python install --no-cache-dir \
      'pyspark[connect]==4.3.0' 'py4j==0.10.9.9' 'pandas==3.1.1' 'zstandard==0.25.0' \
 && /opt/quiver/bin/spark-submit --version
ENV JAVA_HOME=/opt/java/openjdk \
    PATH=/opt/java/openjdk/bin:/opt/quiver/bin:$PATH \
    PYSPARK_PYTHON=/opt/quiver/bin/python
USER 10001:10001
ENTRYPOINT []
