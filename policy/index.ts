// CrossGuard policy pack for pulumi-qcow2 Image resources. Constructing the PolicyPack starts
// the analyzer's gRPC server (it prints its port), so the policies live in policies.ts.
//
//   pulumi preview --policy-pack ./policy --policy-pack-config ./qcow2-policy-config.json
//
// Config (per policy, each may also set enforcementLevel):
//   { "qcow2-allowed-paths": { "allowedDirectories": ["/srv/images"] },
//     "qcow2-max-size": { "maxSize": "4T" } }

import { PolicyPack } from '@pulumi/policy';
import { policies } from './policies';

new PolicyPack('qcow2', {
  description: 'Guard rails for qcow2 disk images managed with pulumi-qcow2',
  enforcementLevel: 'advisory', // each policy sets its own level; this is the fallback
  policies,
});
