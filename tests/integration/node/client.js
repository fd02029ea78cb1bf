// A Node.js client of quiver.serving.v1.FeatureServingService, generated from protos/ at run
// time with @grpc/proto-loader: calls GetOnlineFeatures over TLS with a bearer token and
// prints what came back as one JSON line.
//
//   node client.js PROTOS_DIR TARGET CA_FILE TOKEN|- FEATURE_SERVICE USER_ID MERCHANT_ID
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protos, target, caFile, token, service, userId, merchantId] = process.argv.slice(2);

const definition = protoLoader.loadSync(
  path.join(protos, "quiver/serving/v1/serving_service.proto"),
  { includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const serving = grpc.loadPackageDefinition(definition).quiver.serving.v1;
const credentials = grpc.credentials.createSsl(fs.readFileSync(caFile));
const client = new serving.FeatureServingService(target, credentials);

const metadata = new grpc.Metadata();
if (token !== "-") {
  metadata.set("authorization", `Bearer ${token}`);
}
const request = {
  feature_service: service,
  entities: {
    user_id: { int64_values: { values: [userId] } },
    merchant_id: { int64_values: { values: [merchantId] } },
  },
};
client.GetOnlineFeatures(request, metadata, { deadline: Date.now() + 10000 }, (error, response) => {
  if (error) {
    // The rich status travels in the grpc-status-details-bin trailer.
    const details = error.metadata ? error.metadata.get("grpc-status-details-bin") : [];
    console.log(JSON.stringify({
      code: error.code, details: error.details, rich_status_bytes: details.length ? details[0].length : 0,
    }));
  } else {
    console.log(JSON.stringify({
      code: 0,
      feature_names: response.feature_names,
      entity_count: response.entity_count,
      statuses: response.columns.map((c) => c.statuses[0]),
    }));
  }
  client.close();
});
