// OpenTelemetry's JavaScript SDK logging through its OTLP/HTTP exporter (http/json: OTLP's JSON
// encoding) to the otlp source: node otlp_logs.mjs <url> <token> <count>. Bodies are maps.
import { LoggerProvider, BatchLogRecordProcessor } from '@opentelemetry/sdk-logs';
import { OTLPLogExporter } from '@opentelemetry/exporter-logs-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';

const [url, token, count] = process.argv.slice(2);
const exporter = new OTLPLogExporter({ url, headers: { Authorization: `Bearer ${token}` } });
const provider = new LoggerProvider({
  resource: resourceFromAttributes({ 'service.name': 'storefront', 'service.version': '4.2.0' }),
  processors: [new BatchLogRecordProcessor({ exporter, maxExportBatchSize: 50 })],
});
const logger = provider.getLogger('storefront.http', '4.2.0');
for (let i = 0; i < Number(count); i++) {
  logger.emit({
    severityNumber: 9,
    severityText: 'INFO',
    body: { msg: `GET /item/${i}`, status: 200 },
    attributes: { 'http.route': '/item/:id', 'item.id': i, 'cart.total': 19.5 },
  });
}
await provider.shutdown();
