// Validates prometheus-operator objects (ServiceMonitor, PodMonitor, PrometheusRule, …) with the
// validators that npm's @kubernetes-models/prometheus-operator generates from the operator's Go
// API types (the package ships compiled ajv validators, not JSON schema files).
//
//   node validate_prometheus_operator.mjs NODE_MODULES_DIR < objects.json
//
// Reads a JSON array of objects; prints a JSON array with, per object, null when it validates or
// the error message. Exits 2 when a kind is not known to the package.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node validate_prometheus_operator.mjs NODE_MODULES_DIR < objects.json");
  process.exit(64);
}
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const [group, version] = String(obj.apiVersion).split("/");
  if (group !== "monitoring.coreos.com") {
    console.error(`not a prometheus-operator object: ${obj.apiVersion} ${obj.kind}`);
    process.exit(2);
  }
  const file = join(modules, "@kubernetes-models", "prometheus-operator", group, version, `${obj.kind}.js`);
  let Model;
  try {
    Model = (await import(pathToFileURL(file).href))[obj.kind];
  } catch (err) {
    console.error(`unknown kind ${obj.apiVersion} ${obj.kind}: ${err.message}`);
    process.exit(2);
  }
  try {
    new Model(obj).validate();
    results.push(null);
  } catch (err) {
    results.push(String(err.message ?? err));
  }
}
process.stdout.write(JSON.stringify(results));
