package hostclient

import (
	"context"
	"encoding/base64"
)

// basicAuth sends a host's token the way flintlockd checks it:
// "authorization: Basic base64(token)" on every call.
type basicAuth struct {
	token string
}

func (a basicAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(a.token))}, nil
}

// RequireTransportSecurity is false: flintlockd accepts tokens over
// plaintext connections too (a cluster without tlsSecretRef), as upstream
// clients did.
func (basicAuth) RequireTransportSecurity() bool { return false }
