// The peer of bench/identity/run.py: node's oidc-provider (a certified OpenID provider), configured for
// the same job as Garrison's identity provider in that benchmark.
//
//   CLIENT_ID=... CLIENT_SECRET=... node server.mjs [--port 0]
//
// - one node process, plain HTTP on 127.0.0.1 (Garrison's side runs plain too: tls.insecure_disable);
//   the issuer is http://127.0.0.1:<the port actually bound>, so --port 0 is fine;
// - one ES256 (P-256) signing key, generated at start;
// - the built-in in-memory adapter (oidc-provider's development adapter: an LRU of 1,000 entries);
// - one client: client_credentials only, client_secret_basic, scope "api";
// - resource indicators: the default resource RESOURCE_JWT gets ES256-signed JWT access tokens
//   (RFC 9068, `typ: at+jwt`), so every token request costs one ES256 signature, as in Garrison;
//   RESOURCE_OPAQUE gets opaque tokens: oidc-provider refuses to introspect structured (JWT) tokens
//   ("Structured JWT Tokens cannot be introspected"), so the introspection figures are measured
//   with opaque tokens, looked up in the in-memory adapter;
// - introspection at /introspect (Garrison's path; oidc-provider's default is /token/introspection);
// - 5-minute access tokens.
//
// Once it serves, it prints one JSON line: {"oidc_provider": "127.0.0.1:<port>", "issuer": ...}.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const RESOURCE_JWT = 'urn:garrison-bench:api';
const RESOURCE_OPAQUE = 'urn:garrison-bench:api-opaque';
const SCOPE = 'api';
const ACCESS_TOKEN_TTL = 300;

function signingKey() {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'ES256', use: 'sig' };
}

function resourceServer(format) {
  const server = { scope: SCOPE, accessTokenTTL: ACCESS_TOKEN_TTL, accessTokenFormat: format };
  return format === 'jwt' ? { ...server, jwt: { sign: { alg: 'ES256' } } } : server;
}

function configuration(clientId, clientSecret) {
  return {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: SCOPE,
        id_token_signed_response_alg: 'ES256', // the only key is an EC key; the default would be RS256
      },
    ],
    jwks: { keys: [signingKey()] },
    scopes: ['openid', SCOPE],
    routes: { introspection: '/introspect' },
    ttl: { ClientCredentials: ACCESS_TOKEN_TTL, AccessToken: ACCESS_TOKEN_TTL },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE_JWT,
        getResourceServerInfo: async (ctx, indicator) => {
          if (indicator === RESOURCE_JWT) return resourceServer('jwt');
          if (indicator === RESOURCE_OPAQUE) return resourceServer('opaque');
          throw new Provider.errors.InvalidTarget();
        },
      },
    },
  };
}

function main() {
  const { values } = parseArgs({ options: { port: { type: 'string', default: '0' } } });
  const { CLIENT_ID: clientId, CLIENT_SECRET: clientSecret } = process.env;
  if (!clientId || !clientSecret) {
    console.error('set CLIENT_ID and CLIENT_SECRET in the environment');
    process.exit(2);
  }
  const server = createServer();
  server.keepAliveTimeout = 65_000; // wrk keeps its connections for the whole run
  server.listen(Number(values.port), '127.0.0.1', () => {
    const { port } = server.address();
    const issuer = `http://127.0.0.1:${port}`;
    const provider = new Provider(issuer, configuration(clientId, clientSecret));
    provider.on('server_error', (ctx, error) => console.error('server_error', error));
    server.on('request', provider.callback());
    console.log(JSON.stringify({ oidc_provider: `127.0.0.1:${port}`, issuer, node: process.version }));
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
