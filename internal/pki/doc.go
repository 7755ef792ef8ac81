// Package pki is Vigil's identities and their certificates: the TLS
// configurations of the aggregator and its clients (certificate files
// reloaded when they change on disk), the role and name a certificate
// names in its URI SAN (spiffe://vigil/ROLE/NAME), the CA that signs node
// certificates at bootstrap, and the token files of bootstrap and of the
// HTTP API.
//
// A node's identity is spiffe://vigil/node/NAME: the aggregator refuses a
// hello that names any other node, and a node certificate calls nothing
// but the agent's stream and its own renewal.
package pki
