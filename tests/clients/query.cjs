// One query through @lakehouse-rs/flight-sql-client (arrow-rs's Flight SQL client, for Node):
// node query.cjs HOST PORT SQL [USER PASSWORD]. With a user it handshakes first (Basic, then the
// bearer). Prints the result's rows as JSON. Run by tests/test_clients_node.py; NODE_PATH names the
// node_modules that `make test` installs under build/clients.
const { createFlightSqlClient } = require("@lakehouse-rs/flight-sql-client");
const { tableFromIPC } = require("apache-arrow");

async function main() {
  const [host, port, sql, username, password] = process.argv.slice(2);
  const options = { host, port: Number(port), tls: false, headers: [] };
  if (username !== undefined) Object.assign(options, { username, password });
  const client = await createFlightSqlClient(options);
  const table = tableFromIPC(await client.query(sql));
  const rows = table.toArray().map((row) => Object.fromEntries(table.schema.fields.map((f) => [f.name, row[f.name]])));
  console.log(JSON.stringify(rows, (_, v) => (typeof v === "bigint" ? Number(v) : v)));
}

main().catch((error) => {
  console.error(String(error));
  process.exit(1);
});
