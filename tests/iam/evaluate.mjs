// Test-only IAM policy evaluator: reads {policies, requests} as JSON on stdin and writes one
// decision per request, with the Sids of the identity statements that allowed it.
// iam-simulate (https://github.com/cloud-copilot/iam-simulate) models AWS's evaluation logic:
// explicit deny, identity and resource policies, every condition operator.
import { runSimulation } from '@cloud-copilot/iam-simulate'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const { policies, requests } = JSON.parse(Buffer.concat(chunks).toString())

const sids = (statements) => (statements || []).map((s) => s.explain?.identifier)
const out = []
for (const req of requests) {
  const simulation = {
    request: {
      principal: req.principal,
      action: req.action,
      resource: { resource: req.resource, accountId: req.account },
      contextVariables: req.context || {}
    },
    identityPolicies: req.identity.map((name) => ({ name, policy: policies[name] })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: req.resourcePolicy ? policies[req.resourcePolicy] : undefined
  }
  const r = await runSimulation(simulation, {})
  if (r.resultType === 'error') {
    out.push({ id: req.id, decision: 'Error', errors: r.errors })
    continue
  }
  const results = r.resultType === 'wildcard' ? r.results : [r.result]
  out.push({
    id: req.id,
    decision: r.overallResult,
    allowedBy: results.flatMap((one) => sids(one?.analysis?.identityAnalysis?.allowStatements))
  })
}
process.stdout.write(JSON.stringify(out))
