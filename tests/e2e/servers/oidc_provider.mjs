// A real OpenID Connect provider (panva's `oidc-provider`) for the approval
// page's sign-in tests: one confidential test client that must use PKCE,
// a fixed set of test users, and the package's own login and consent pages
// (devInteractions: any password is accepted for a known user).
//
// Usage: node oidc_provider.mjs --port N --client-id ID --client-secret S
//                                --redirect-uri URI --users a@x,b@x
// Prints "ready <issuer>" on stdout once listening.
import { generateKeyPairSync } from "node:crypto";
import { parseArgs } from "node:util";
import Provider from "oidc-provider";

const { values: opts } = parseArgs({
  options: {
    port: { type: "string" },
    "client-id": { type: "string" },
    "client-secret": { type: "string" },
    "redirect-uri": { type: "string" },
    users: { type: "string" },
  },
});

const issuer = `http://127.0.0.1:${opts.port}`;
const users = new Set(opts.users.split(",").filter(Boolean));

// A fresh RS256 signing key for each run (published at jwks_uri).
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "test-rs256", alg: "RS256", use: "sig" };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: opts["client-id"],
      client_secret: opts["client-secret"],
      redirect_uris: [opts["redirect-uri"]],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { required: () => true },
  jwks: { keys: [jwk] },
  cookies: { keys: ["mandate-e2e-cookie-key-0123456789"] },
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, id) {
    if (!users.has(id)) return undefined;
    return { accountId: id, async claims() { return { sub: id }; } };
  },
});
provider.on("server_error", (_ctx, err) => console.error("server_error", err));

provider.listen(Number(opts.port), "127.0.0.1", () => {
  console.log(`ready ${issuer}`);
});
