FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production ORISUN_DATA_DIR=/app/data
# Reachable from outside the container, which turns authentication on: pass
# ORISUN_ADMIN_PASSWORD (docker run -e ORISUN_ADMIN_PASSWORD=...) for the first admin.
ENV ORISUN_HOST=0.0.0.0
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# The embedded PGlite keeps its data here and the server runs as `node` (uid 1000): the folder
# must be node's. A new named volume starts as a copy of it, ownership included; a bind mount
# keeps the host folder's owner, which must then be uid 1000.
RUN mkdir -p /app/data && chown node:node /app/data
VOLUME ["/app/data"]
EXPOSE 50051
USER node
# A first start on an empty volume runs initdb: give it a minute before failures count.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "dist/server/process/healthcheck.js"]
CMD ["node", "dist/server/main.js"]
