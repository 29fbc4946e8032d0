// A real OpenID Connect provider (panva's `oidc-provider`) for the approval
// page's sign-in tests: one confidential test client that must use PKCE,
// a fixed set of test users, and the package's own login and consent pages
// (devInteractions: any password is accepted for a known user).
//
// Usage: node oidc_provider.mjs --port N --client-id ID --client-secret S
//                                --redirect-uri URI --users a@x,b@x
//                                [--user-claims FILE] [--extra-clients FILE]
// --user-claims: JSON {user: {claim: value}} released with the scopes
//   `groups` (claim `groups`) and `delegation` (claim `may_act`), in the ID
//   token too (the broker tests read them there).
// --extra-clients: JSON [client metadata + optional "id_token_ttl" seconds].
// Prints "ready <issuer>" on stdout once listening.
import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import Provider from "oidc-provider";

const { values: opts } = parseArgs({
  options: {
    port: { type: "string" },
    "client-id": { type: "string" },
    "client-secret": { type: "string" },
    "redirect-uri": { type: "string" },
    users: { type: "string" },
    "user-claims": { type: "string" },
    "extra-clients": { type: "string" },
  },
});

const issuer = `http://127.0.0.1:${opts.port}`;
const users = new Set(opts.users.split(",").filter(Boolean));
const userClaims = opts["user-claims"] ? JSON.parse(readFileSync(opts["user-claims"], "utf8")) : {};
const extraClients = opts["extra-clients"] ? JSON.parse(readFileSync(opts["extra-clients"], "utf8")) : [];
const idTokenTtl = Object.fromEntries(
  extraClients.filter((c) => c.id_token_ttl).map((c) => [c.client_id, c.id_token_ttl]),
);

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
    ...extraClients.map(({ id_token_ttl: _ttl, ...meta }) => meta),
  ],
  claims: { openid: ["sub"], groups: ["groups"], delegation: ["may_act"] },
  conformIdTokenClaims: false,
  ttl: {
    IdToken: (_ctx, _token, client) => idTokenTtl[client?.clientId] ?? 3600,
  },
  pkce: { required: () => true },
  jwks: { keys: [jwk] },
  cookies: { keys: ["mandate-e2e-cookie-key-0123456789"] },
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, id) {
    if (!users.has(id)) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...(userClaims[id] ?? {}) }; } };
  },
});
provider.on("server_error", (_ctx, err) => console.error("server_error", err));

provider.listen(Number(opts.port), "127.0.0.1", () => {
  console.log(`ready ${issuer}`);
});
